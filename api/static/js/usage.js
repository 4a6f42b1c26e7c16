// The team's usage against its limits (GET /v1/usage, docs/service.md), shown above the job
// list: "Usage: queued 3/10 · running 1/2 · storage 1.12 GiB / 50.0 GiB". A meter at its limit
// is marked, with what the service does then, so a refused submission is no surprise.

import { api } from "./api.js";
import { clear, h } from "./dom.js";
import { fmtBytes } from "./format.js";

// What reaching each limit means (api/usage.py): said on hover of a full meter.
const AT_LIMIT = {
  queued: "At the limit: a new submission is refused (429) until a queued job starts or is cancelled.",
  running: "At the limit: further jobs wait queued until one of these finishes.",
  storage: "At the limit: submissions and uploads are refused (403); delete jobs or datasets to free space.",
};

function meter(name, m, fmt) {
  if (!m || typeof m.used !== "number") return null;
  const limited = typeof m.limit === "number";
  return {
    name,
    text: limited ? `${fmt(m.used)}${name === "storage" ? " / " : "/"}${fmt(m.limit)}` : `${fmt(m.used)}`,
    // a limit of 0 is never sent (null means none), so used >= limit is "full"
    full: limited && m.used >= m.limit,
    limited,
  };
}

/**
 * The meters of a /v1/usage body: [{name, text, full, limited}] for queued, running and storage;
 * a meter the body lacks is left out. Pure.
 */
export function usageMeters(usage) {
  const count = (n) => String(n);
  return [
    meter("queued", usage?.queued, count),
    meter("running", usage?.running, count),
    meter("storage", usage?.stored_bytes, fmtBytes),
  ].filter(Boolean);
}

/** The panel as one line of text (what the page shows, and what a screen reader reads). */
export function usageText(usage) {
  const meters = usageMeters(usage);
  if (!meters.length) return "";
  const part = (m) => `${m.name} ${m.text}${m.limited ? "" : " (no limit)"}`;
  return `Usage: ${meters.map(part).join(" · ")}`;
}

/**
 * The panel element and its refresh(signal). A service without /v1/usage (404) hides the panel
 * and refresh returns false, which stops a poller; other errors propagate to the poller.
 */
export function usagePanel() {
  const el = h("p", { class: "usage", "data-testid": "usage", hidden: true });

  function render(usage) {
    const meters = usageMeters(usage);
    el.hidden = !meters.length;
    const parts = meters.map((m, i) => [
      i ? " · " : "",
      h(
        "span",
        {
          class: m.full ? "usage-meter usage-full" : "usage-meter",
          "data-meter": m.name,
          title: m.full ? AT_LIMIT[m.name] : null,
        },
        `${m.name} ${m.text}`,
        m.limited ? "" : h("span", { class: "muted" }, " (no limit)"),
      ),
    ]);
    clear(el).append(h("span", { class: "usage-label" }, "Usage: "), ...parts.flat());
  }

  async function refresh(signal) {
    try {
      render(await api("/v1/usage", { signal }));
      return true;
    } catch (e) {
      if (e?.status !== 404) throw e;
      el.hidden = true;
      return false;
    }
  }

  return { el, refresh };
}
