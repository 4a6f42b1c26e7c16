// The job list: live status and progress of the team's jobs, the team's usage against its
// limits, a status filter, cursor paging, and a selection of finished jobs to compare.

import { api, listOf } from "../api.js";
import { h, patch } from "../dom.js";
import { STATUSES, isTerminal } from "../format.js";
import { jobColumns } from "../jobs/columns.js";
import { poller } from "../poll.js";
import { usagePanel } from "../usage.js";

const PAGE = 25;
// Usage changes with the jobs, which the list sees: it is re-read when a status changes and
// otherwise only now and then, so the list's one-second poll does not double the requests.
const USAGE_INTERVAL_MS = 5000;

export function mount(root, ctx) {
  const status = STATUSES.includes(ctx.query.get("status")) ? ctx.query.get("status") : "";
  const selected = new Set();
  let firstPage = []; // refreshed by the poll
  let older = []; // pages fetched with "Load more"
  let hasMore = false;
  let loaded = false;
  const rows = new Map(); // id -> <tr>
  const usage = usagePanel();
  let statuses = null; // the jobs' ids and statuses at the last render

  const filter = h(
    "fieldset",
    { class: "segmented", role: "radiogroup", "aria-label": "Filter by status" },
    h("legend", { class: "sr-only" }, "Filter by status"),
    ["", ...STATUSES].map((s) => {
      const id = `filter-${s || "all"}`;
      return h(
        "span",
        {},
        h("input", {
          type: "radio",
          name: "status-filter",
          id,
          value: s,
          checked: s === status,
          onchange: () => ctx.navigate(s ? `#/jobs?status=${s}` : "#/jobs"),
        }),
        h("label", { for: id }, s ? s[0].toUpperCase() + s.slice(1) : "All"),
      );
    }),
  );

  const compareButton = h(
    "button",
    {
      type: "button",
      class: "btn",
      disabled: true,
      onclick: () => ctx.navigate(`#/compare?ids=${[...selected].join(",")}`),
    },
    "Compare selected",
  );
  const tbody = h("tbody");
  const empty = h("p", { class: "empty", hidden: true });
  const moreButton = h(
    "button",
    { type: "button", class: "btn", hidden: true, onclick: loadMore },
    "Load more",
  );
  const table = h(
    "table",
    { class: "table jobs-table", "aria-describedby": "jobs-title" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", { scope: "col", class: "col-select" }, h("span", { class: "sr-only" }, "Select to compare")),
        jobColumns().map((c) => h("th", { scope: "col" }, c.label)),
      ),
    ),
    tbody,
  );

  root.append(
    h(
      "section",
      { class: "view", "aria-labelledby": "jobs-title" },
      h(
        "div",
        { class: "view-head" },
        h("h1", { id: "jobs-title" }, status ? `Jobs · ${status}` : "Jobs"),
        h(
          "div",
          { class: "view-actions" },
          compareButton,
          h("a", { class: "btn btn-primary", href: "#/new" }, "New job"),
        ),
      ),
      usage.el,
      filter,
      h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "Jobs" }, table),
      empty,
      h("div", { class: "actions center" }, moreButton),
    ),
  );
  document.title = "Jobs · Spruce";

  function updateCompareButton() {
    compareButton.disabled = selected.size < 1;
    compareButton.textContent = selected.size ? `Compare selected (${selected.size})` : "Compare selected";
  }

  function renderRow(job, now) {
    let tr = rows.get(job.id);
    if (!tr) {
      const box = h("input", {
        type: "checkbox",
        "aria-label": `Select ${job.id} to compare`,
        onchange: (e) => {
          if (e.target.checked) selected.add(job.id);
          else selected.delete(job.id);
          updateCompareButton();
        },
      });
      tr = h("tr", { dataset: { jobId: job.id } }, h("td", { class: "col-select" }, box));
      for (let i = 0; i < jobColumns().length; i += 1) tr.append(h("td"));
      rows.set(job.id, tr);
    }
    tr.dataset.status = job.status;
    const box = tr.querySelector("input[type=checkbox]");
    // Only finished jobs have results to compare.
    box.disabled = job.status !== "succeeded";
    if (box.disabled && box.checked) {
      box.checked = false;
      selected.delete(job.id);
    }
    const tds = tr.children;
    jobColumns(now).forEach((c, i) => patch(tds[i + 1], c.cell(job)));
    return tr;
  }

  function render() {
    const now = Date.now();
    const seen = new Set();
    const jobs = [];
    for (const job of [...firstPage, ...older]) {
      if (seen.has(job.id)) continue;
      seen.add(job.id);
      jobs.push(job);
    }
    const wanted = jobs.map((job) => renderRow(job, now));
    // Re-order only when needed so focus inside a row is kept.
    wanted.forEach((tr, i) => {
      if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
    });
    while (tbody.children.length > wanted.length) tbody.lastChild.remove();
    for (const id of rows.keys()) if (!seen.has(id)) rows.delete(id);
    empty.hidden = !loaded || jobs.length > 0;
    empty.textContent = status ? `No ${status} jobs.` : "No jobs yet. Submit one with “New job”.";
    table.hidden = loaded && jobs.length === 0;
    moreButton.hidden = !hasMore;
    updateCompareButton();
    const current = jobs.map((j) => `${j.id}:${j.status}`).join(",");
    // The first render needs no extra read: the usage poll has just made one.
    if (statuses !== null && current !== statuses) usagePoll.refresh();
    statuses = current;
  }

  function query(after) {
    const q = new URLSearchParams({ limit: String(PAGE) });
    if (status) q.set("status", status);
    if (after) q.set("after", after);
    return `/v1/jobs?${q}`;
  }

  async function refresh(signal) {
    const body = await api(query(null), { signal });
    firstPage = listOf(body);
    if (!older.length) hasMore = Boolean(body?.has_more);
    // Jobs beyond the first page that still run are refreshed one by one.
    const firstIds = new Set(firstPage.map((j) => j.id));
    older = older.filter((j) => !firstIds.has(j.id));
    const live = older.filter((j) => !isTerminal(j)).slice(0, 10);
    const fresh = await Promise.all(
      live.map((j) => api(`/v1/jobs/${encodeURIComponent(j.id)}`, { signal }).catch(() => j)),
    );
    const byId = new Map(fresh.map((j) => [j.id, j]));
    older = older.map((j) => byId.get(j.id) || j);
    loaded = true;
    render();
  }

  async function loadMore() {
    const all = [...firstPage, ...older];
    const last = all[all.length - 1];
    if (!last) return;
    moreButton.disabled = true;
    try {
      const body = await api(query(last.id));
      older = older.concat(listOf(body));
      hasMore = Boolean(body?.has_more);
      render();
    } catch (e) {
      ctx.notify(e.message, "error");
    } finally {
      moreButton.disabled = false;
    }
  }

  const usagePoll = poller(usage.refresh, USAGE_INTERVAL_MS, {
    // The list's own poll reports an unreachable service; the panel keeps its last figures.
    onError: () => {},
  });
  const poll = poller(refresh, 1000, {
    onError: (e) => ctx.notify(e ? `Could not refresh the job list: ${e.message}` : null, "error"),
  });
  return () => {
    poll.stop();
    usagePoll.stop();
  };
}
