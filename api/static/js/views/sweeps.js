// Sweeps: the team's sweeps (#/sweeps) and one sweep (#/sweeps/<id>): its progress, its table
// (one row per child job) and perplexity against achieved sparsity with the Pareto front marked.
// The table, front and best_within come from the API (GET /v1/sweeps/{id}); this view only draws.

import { api, listOf } from "../api.js";
import * as charts from "../charts.js";
import { clear, definitionList, h, patch, progressBar, statusBadge } from "../dom.js";
import { DASH, TERMINAL, fmtBytes, fmtNum, fmtPct, fmtRelative, fmtSparsity, shortId } from "../format.js";
import { poller } from "../poll.js";
import { table } from "../table.js";

const POLL_MS = 2000;
const DEFAULT_WITHIN = 0.1;

/** The chart's series of a sweep: every finished row, the Pareto front, the dense level. */
export function sweepCurve(sweep) {
  const text = sweep.text;
  const front = new Set((sweep.pareto || []).map((r) => r.job));
  const points = [];
  let dense = null;
  for (const row of sweep.table || []) {
    const y = text ? row.perplexity?.sparse?.[text] : undefined;
    if (row.status !== "succeeded" || row.sparsity === null || y === undefined || y === null) continue;
    points.push({ x: row.sparsity, y, job: row.job, label: rowLabel(row), pareto: front.has(row.job) });
    const d = row.perplexity?.dense?.[text];
    if (dense === null && d !== undefined && d !== null) dense = d;
  }
  const paretoLine = points.filter((p) => p.pareto).sort((a, b) => a.x - b.x);
  return { text, points, pareto: paretoLine, dense };
}

/** "2:4 wanda default": the grid cell of a row, its axes that were swept. */
export function rowLabel(row) {
  return [fmtSparsity(row.target), row.pruner, row.preset].filter(Boolean).join(" ");
}

/** The table's columns for a sweep whose ranking text is `text`. */
export function sweepColumns(text, front, best) {
  const ppl = (row, which) => (text ? row.perplexity?.[which]?.[text] : null);
  return [
    { label: "Target", header: true, cell: (r) => fmtSparsity(r.target) },
    { label: "Pruner", cell: (r) => r.pruner || DASH },
    { label: "Preset", cell: (r) => r.preset || DASH },
    { label: "Status", cell: (r) => statusBadge(r.status) },
    { label: "Achieved", num: true, cell: (r) => fmtPct(r.sparsity, 2) },
    { label: `Dense ppl${text ? ` (${text})` : ""}`, num: true, cell: (r) => fmtNum(ppl(r, "dense")) },
    { label: `Sparse ppl${text ? ` (${text})` : ""}`, num: true, cell: (r) => fmtNum(ppl(r, "sparse")) },
    { label: "HF size", num: true, cell: (r) => fmtBytes(r.hf_bytes) },
    { label: "Compact size", num: true, cell: (r) => fmtBytes(r.compact_bytes) },
    {
      label: "Pareto",
      cell: (r) => [front.has(r.job) ? "on the front" : "", best === r.job ? " · best within" : ""].join("") || DASH,
    },
    {
      label: "Job",
      cls: "mono",
      cell: (r) => h("a", { href: `#/jobs/${encodeURIComponent(r.job)}`, title: r.job }, shortId(r.job)),
    },
  ];
}

export function mount(root, ctx) {
  return ctx.id ? mountOne(root, ctx, ctx.id) : mountList(root, ctx);
}

function mountList(root, ctx) {
  const slot = h("div", { class: "table-wrap" });
  root.append(
    h(
      "section",
      { class: "view", "aria-labelledby": "sweeps-title" },
      h("div", { class: "view-head" }, h("h1", { id: "sweeps-title" }, "Sweeps")),
      h(
        "p",
        { class: "muted" },
        "A sweep runs one job at several sparsity targets (POST /v1/sweeps, or `spruce sweep`).",
      ),
      h("section", { class: "card" }, slot),
    ),
  );
  document.title = "Sweeps · Spruce";
  const columns = [
    {
      label: "Sweep",
      header: true,
      cls: "mono",
      cell: (s) => h("a", { href: `#/sweeps/${encodeURIComponent(s.id)}`, title: s.id }, shortId(s.id)),
    },
    { label: "Status", cell: (s) => statusBadge(s.status) },
    { label: "Jobs done", num: true, cell: (s) => `${s.progress.done} / ${s.progress.total}` },
    { label: "Targets", cell: (s) => [...new Set(s.table.map((r) => fmtSparsity(r.target)))].join(", ") },
    { label: "Created", cell: (s) => fmtRelative(s.created_at) },
  ];
  const poll = poller(
    async (signal) => {
      const list = listOf(await api("/v1/sweeps?limit=50", { signal }));
      patch(
        slot,
        list.length
          ? table(columns, list, { "data-testid": "sweeps-table" }, { rowAttrs: (s) => ({ "data-sweep-id": s.id }) })
          : h("p", { class: "empty" }, "No sweeps yet."),
      );
      return list.some((s) => !TERMINAL.has(s.status));
    },
    POLL_MS,
    { onError: (e) => ctx.notify(e ? `Could not load sweeps: ${e.message}` : null, "error") },
  );
  return () => poll.stop();
}

function mountOne(root, ctx, id) {
  let within = Number(ctx.query.get("within") ?? DEFAULT_WITHIN);
  if (!Number.isFinite(within) || within < 0) within = DEFAULT_WITHIN;
  let chart = null;
  let drawn = ""; // the chart's data at the last draw: redraw only when it changes
  const title = h("h1", { id: "sweep-title" }, `Sweep ${shortId(id)}`);
  const badge = h("span");
  const bar = h("div");
  const facts = h("div");
  const best = h("p", { "data-testid": "best-within" });
  const slot = h("div", { class: "table-wrap" });
  const canvas = h("canvas", {
    id: "chart-sweep",
    role: "img",
    "aria-label": "Perplexity against achieved sparsity, one point per job, the Pareto front joined",
  });
  const chartCard = h(
    "section",
    { class: "card", "aria-labelledby": "sweep-chart-title", hidden: true },
    h("h2", { id: "sweep-chart-title" }, "Perplexity against sparsity"),
    h("div", { class: "chart chart-wide" }, canvas),
  );
  const withinInput = h("input", {
    id: "sweep-within",
    type: "number",
    min: "0",
    max: "10000", // the API's bound: within=100, a hundred times dense
    step: "1",
    value: String(Math.round(within * 100)),
    onchange: () => {
      const pct = Number(withinInput.value);
      if (!Number.isFinite(pct) || pct < 0 || pct > 10000) return;
      within = pct / 100;
      history.replaceState(null, "", `#/sweeps/${encodeURIComponent(id)}?within=${within}`);
      poll.refresh();
    },
  });
  const cancelButton = h("button", { type: "button", class: "btn", hidden: true, onclick: cancel }, "Cancel sweep");

  root.append(
    h(
      "section",
      { class: "view", "aria-labelledby": "sweep-title" },
      h("div", { class: "view-head" }, title, badge, cancelButton),
      bar,
      facts,
      h(
        "div",
        { class: "field field-inline-row" },
        h("label", { for: "sweep-within" }, "Perplexity budget (% over dense)"),
        withinInput,
      ),
      best,
      h("section", { class: "card", "aria-label": "Sweep table" }, slot),
      chartCard,
    ),
  );
  document.title = `Sweep ${shortId(id)} · Spruce`;

  async function cancel() {
    cancelButton.disabled = true;
    try {
      await api(`/v1/sweeps/${encodeURIComponent(id)}/cancel`, { method: "POST" });
      poll.refresh();
    } catch (e) {
      ctx.notify(`Could not cancel: ${e.message}`, "error");
      cancelButton.disabled = false;
    }
  }

  function render(sweep) {
    const done = TERMINAL.has(sweep.status);
    patch(badge, statusBadge(sweep.status));
    clear(bar).append(
      progressBar(sweep.progress.total ? sweep.progress.done / sweep.progress.total : 0, {
        label: "Jobs done",
        status: sweep.status,
      }),
      h("p", { class: "muted" }, `${sweep.progress.done} of ${sweep.progress.total} jobs done`),
    );
    cancelButton.hidden = done;
    const cal = sweep.calibration || {};
    patch(
      facts,
      definitionList([
        ["Calibration (every job)", `${cal.source} · ${cal.samples} × ${cal.seq_len} tokens · seed ${cal.seed}`],
        ["Ranked on", sweep.text || "no evaluation"],
        ["Created", fmtRelative(sweep.created_at)],
      ]),
    );
    const winner = sweep.best_within;
    patch(
      best,
      !sweep.text
        ? ""
        : winner
          ? `Sparsest within ${fmtPct(within, 0)} of dense: ${rowLabel(winner)} (${fmtPct(winner.sparsity, 2)} achieved, job ${shortId(winner.job)})`
          : `No finished job is within ${fmtPct(within, 0)} of dense yet.`,
    );
    const front = new Set((sweep.pareto || []).map((r) => r.job));
    patch(
      slot,
      table(sweepColumns(sweep.text, front, winner?.job), sweep.table, { "data-testid": "sweep-table" }, {
        rowAttrs: (r) => ({ "data-job-id": r.job, "data-pareto": front.has(r.job) ? "true" : "false" }),
      }),
    );
    renderChart(sweepCurve(sweep));
  }

  function renderChart(curve) {
    chartCard.hidden = !curve.points.length;
    const key = JSON.stringify(curve);
    if (!curve.points.length || !charts.available() || key === drawn) return;
    drawn = key;
    chart?.destroy();
    const datasets = [
      { label: "jobs", data: curve.points.map((p) => ({ x: p.x, y: p.y })), color: charts.color(0) },
      {
        label: "Pareto front",
        type: "line",
        data: curve.pareto.map((p) => ({ x: p.x, y: p.y })),
        color: charts.color(1),
        pointStyle: "rectRot",
        pointRadius: 7,
        showLine: true,
      },
    ];
    if (curve.dense !== null) {
      datasets.push({ label: "dense", data: [{ x: 0, y: curve.dense }], color: "#64748b", pointRadius: 7 });
    }
    chart = charts.draw(canvas, {
      kind: "scatter",
      datasets,
      xLinear: true,
      xPercent: true,
      xTitle: "achieved sparsity",
      yTitle: `perplexity (${curve.text})`,
      yLog: charts.wantsLog([...curve.points.map((p) => p.y), curve.dense]),
    });
  }

  const poll = poller(
    async (signal) => {
      const sweep = await api(`/v1/sweeps/${encodeURIComponent(id)}?within=${within}`, { signal });
      render(sweep);
      return !TERMINAL.has(sweep.status);
    },
    POLL_MS,
    { onError: (e) => ctx.notify(e ? `Could not load the sweep: ${e.message}` : null, "error") },
  );
  return () => {
    poll.stop();
    chart?.destroy();
  };
}
