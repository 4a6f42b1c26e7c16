// The job page's event timeline: pages through GET /v1/jobs/{id}/events with the `after`
// cursor and appends each event once, so polling adds only what is new.

import { api, listOf } from "../api.js";
import { h } from "../dom.js";
import { fmtClock, fmtTime, humanStage } from "../format.js";

// Bounded so one poll cannot loop for ever on a job with a very long history.
const MAX_PAGES = 20;

/** An event as the timeline shows it: {kind, failed, stage, message}. Pure. */
export function eventView(e) {
  // A status event names the state it moved to (data.to); show that rather than "status".
  const kind = String(e.type === "status" && e.data?.to ? e.data.to : e.type || "event");
  return {
    kind,
    failed: /fail|error/.test(kind),
    stage: e.stage ? humanStage(e.stage) : null,
    // "stage load" says nothing the stage column does not.
    message: e.message && e.message !== `stage ${e.stage}` ? e.message : "",
  };
}

/** The events URL after the cursor `lastId` (null: from the start). */
export function eventsPath(jobId, lastId) {
  const q = lastId !== null && lastId !== undefined ? `?after=${encodeURIComponent(lastId)}` : "";
  return `/v1/jobs/${encodeURIComponent(jobId)}/events${q}`;
}

function eventItem(e) {
  const v = eventView(e);
  return h(
    "li",
    { class: `event ${v.failed ? "event-error" : ""}`, "data-type": v.kind },
    h("time", { datetime: e.created_at || "", title: fmtTime(e.created_at) }, fmtClock(e.created_at)),
    h("span", { class: "event-type" }, humanStage(v.kind)),
    v.stage ? h("span", { class: "event-stage" }, v.stage) : null,
    h("span", { class: "event-message" }, v.message),
  );
}

/** The timeline list and its cursor: {el, refresh(signal)}; refresh appends the new events. */
export function timeline(jobId) {
  const el = h("ol", { class: "timeline", "aria-live": "polite", "aria-relevant": "additions" });
  const seen = new Set();
  let lastId = null;

  function add(events) {
    for (const e of events) {
      if (e.id !== undefined && seen.has(e.id)) continue;
      if (e.id !== undefined) seen.add(e.id);
      lastId = e.id ?? lastId;
      el.append(eventItem(e));
    }
  }

  function settle() {
    const placeholder = el.querySelector(".placeholder");
    if (!el.children.length) el.append(h("li", { class: "event muted placeholder" }, "No events yet."));
    else if (placeholder && el.children.length > 1) placeholder.remove();
  }

  async function refresh(signal) {
    try {
      for (let page = 0; page < MAX_PAGES; page += 1) {
        const body = await api(eventsPath(jobId, lastId), { signal });
        const events = listOf(body);
        add(events);
        if (!body?.has_more || !events.length) break;
      }
    } catch (e) {
      // The job itself is the page's subject: a failed events fetch waits for the next poll.
      if (e.name === "AbortError") throw e;
    } finally {
      settle();
    }
  }

  return { el, refresh };
}
