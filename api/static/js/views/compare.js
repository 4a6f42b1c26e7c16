// Compare finished jobs: a table of their results and perplexity against achieved sparsity.

import { api, listOf } from "../api.js";
import * as charts from "../charts.js";
import { clear, h } from "../dom.js";
import {
  DASH,
  fmtBytes,
  fmtDuration,
  fmtMethod,
  fmtModel,
  fmtNum,
  fmtPct,
  fmtRelative,
  fmtSparsity,
  shortId,
  sparsityFraction,
} from "../format.js";
import { perplexityRows } from "../job/report.js";

/** The point a job contributes to the chart: x = achieved (else target) sparsity, y = perplexity. */
export function comparePoint(job, source) {
  const r = job.results || {};
  const rows = perplexityRows(r);
  const row = rows.find((p) => p.source === source) || (source ? null : rows[0]);
  const x = Number.isFinite(Number(r.sparsity?.mean))
    ? Number(r.sparsity.mean)
    : sparsityFraction(job.spec?.sparsity);
  return { x, y: row?.sparse ?? null, dense: row?.dense ?? null };
}

function label(job) {
  const s = job.spec || {};
  return `${fmtMethod(s.method)} ${fmtSparsity(s.sparsity)} (${shortId(job.id)})`;
}

export function mount(root, ctx) {
  const selected = new Set((ctx.query.get("ids") || "").split(",").filter(Boolean));
  const jobs = new Map(); // id -> job
  let source = ctx.query.get("source") || "";
  let chart = null;

  const picker = h("fieldset", { class: "picker" }, h("legend", {}, "Finished jobs"));
  const sourceSelect = h("select", { id: "compare-source" });
  const tableSlot = h("div", { class: "table-wrap" });
  const canvas = h("canvas", {
    id: "chart-compare",
    role: "img",
    "aria-label": "Perplexity against achieved sparsity, one point per job",
  });
  const chartCard = h(
    "section",
    { class: "card", "aria-labelledby": "compare-chart-title" },
    h("h2", { id: "compare-chart-title" }, "Perplexity against sparsity"),
    h("div", { class: "chart chart-wide" }, canvas),
  );

  root.append(
    h(
      "section",
      { class: "view", "aria-labelledby": "compare-title" },
      h("div", { class: "view-head" }, h("h1", { id: "compare-title" }, "Compare jobs")),
      h(
        "div",
        { class: "compare-layout" },
        h("aside", { class: "card" }, picker),
        h(
          "div",
          { class: "compare-main" },
          h(
            "div",
            { class: "field field-inline-row" },
            h("label", { for: "compare-source" }, "Perplexity on"),
            sourceSelect,
          ),
          h("section", { class: "card", "aria-label": "Comparison table" }, tableSlot),
          chartCard,
        ),
      ),
    ),
  );
  document.title = "Compare · Spruce";

  function chosen() {
    return [...selected].map((id) => jobs.get(id)).filter((j) => j && j.results);
  }

  function syncUrl() {
    const q = new URLSearchParams();
    if (selected.size) q.set("ids", [...selected].join(","));
    if (source) q.set("source", source);
    // Replace the URL without a hashchange, so the view is not rebuilt on every click.
    history.replaceState(null, "", `#/compare${q.toString() ? `?${q}` : ""}`);
  }

  function renderSources() {
    const all = new Set();
    for (const j of chosen()) for (const row of perplexityRows(j.results)) all.add(row.source);
    const options = [...all];
    if (!options.includes(source)) source = options.includes("pydoc") ? "pydoc" : (options[0] ?? "");
    clear(sourceSelect).append(
      ...options.map((s) => h("option", { value: s, selected: s === source }, s || "all")),
    );
    sourceSelect.disabled = options.length < 2;
  }

  function renderTable() {
    const list = chosen();
    if (!list.length) {
      clear(tableSlot).append(h("p", { class: "empty" }, "Pick finished jobs on the left to compare them."));
      return;
    }
    const head = [
      "Job",
      "Model",
      "Method",
      "Target",
      "Achieved",
      "Dense ppl",
      "Sparse ppl",
      "Change",
      "Compact size",
      "Total time",
    ];
    const numeric = new Set(["Achieved", "Dense ppl", "Sparse ppl", "Change", "Compact size", "Total time"]);
    const rows = list.map((j) => {
      const p = comparePoint(j, source);
      const t = Object.values(j.results.timings || {}).reduce((a, v) => a + (Number(v) || 0), 0);
      return h(
        "tr",
        { dataset: { jobId: j.id } },
        h(
          "th",
          { scope: "row" },
          h("a", { href: `#/jobs/${encodeURIComponent(j.id)}`, class: "mono", title: j.id }, shortId(j.id)),
        ),
        h("td", { title: j.spec?.model || "" }, fmtModel(j.spec?.model)),
        h("td", {}, fmtMethod(j.spec?.method)),
        h("td", {}, fmtSparsity(j.spec?.sparsity)),
        h("td", { class: "num" }, fmtPct(j.results.sparsity?.mean, 2)),
        h("td", { class: "num" }, fmtNum(p.dense)),
        h("td", { class: "num" }, h("strong", {}, fmtNum(p.y))),
        h("td", { class: "num" }, p.dense && p.y ? `×${(p.y / p.dense).toFixed(2)}` : DASH),
        h("td", { class: "num" }, fmtBytes(j.results.sizes?.compact_bytes)),
        h("td", { class: "num" }, t ? fmtDuration(t) : DASH),
      );
    });
    clear(tableSlot).append(
      h(
        "table",
        { class: "table", "data-testid": "compare-table" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            head.map((c) => h("th", { scope: "col", class: numeric.has(c) ? "num" : null }, c)),
          ),
        ),
        h("tbody", {}, rows),
      ),
    );
  }

  function renderChart() {
    chart?.destroy();
    chart = null;
    const list = chosen();
    chartCard.hidden = !list.length;
    if (!list.length || !charts.available()) return;
    const points = list
      .map((j) => ({ job: j, ...comparePoint(j, source) }))
      .filter((p) => p.y !== null && p.x !== null);
    const dense = new Map(); // model -> dense perplexity (one point at 0% per model)
    for (const p of points) if (p.dense !== null) dense.set(p.job.spec?.model || "dense", p.dense);
    const datasets = points.map((p, i) => ({
      label: label(p.job),
      data: [{ x: p.x, y: p.y }],
      color: charts.color(i),
    }));
    if (dense.size) {
      datasets.push({
        label: "dense",
        data: [...dense.values()].map((y) => ({ x: 0, y })),
        color: "#64748b",
        pointStyle: "rectRot",
        pointRadius: 7,
      });
    }
    chart = charts.draw(canvas, {
      kind: "scatter",
      datasets,
      xLinear: true,
      xPercent: true,
      xTitle: "achieved sparsity",
      yTitle: `perplexity${source ? ` (${source})` : ""}`,
      yLog: charts.wantsLog([...points.map((p) => p.y), ...dense.values()]),
    });
  }

  function renderAll() {
    renderSources();
    renderTable();
    renderChart();
  }

  function renderPicker(list) {
    const now = Date.now();
    const items = list.map((j) => {
      const id = `pick-${j.id}`;
      return h(
        "div",
        { class: "pick" },
        h("input", {
          type: "checkbox",
          id,
          value: j.id,
          checked: selected.has(j.id),
          onchange: (e) => {
            if (e.target.checked) selected.add(j.id);
            else selected.delete(j.id);
            syncUrl();
            renderAll();
          },
        }),
        h(
          "label",
          { for: id },
          h("span", { class: "pick-main" }, label(j)),
          h(
            "span",
            { class: "pick-sub muted" },
            `${fmtModel(j.spec?.model)} · ${fmtRelative(j.finished_at || j.created_at, now)}`,
          ),
        ),
      );
    });
    picker.append(...(items.length ? items : [h("p", { class: "muted" }, "No finished jobs yet.")]));
  }

  sourceSelect.addEventListener("change", () => {
    source = sourceSelect.value;
    syncUrl();
    renderTable();
    renderChart();
  });

  (async () => {
    try {
      const list = listOf(await api("/v1/jobs?status=succeeded&limit=100"));
      for (const j of list) jobs.set(j.id, j);
      // Jobs named in the URL but older than the first page are fetched on their own.
      const missing = [...selected].filter((id) => !jobs.has(id));
      const extra = await Promise.all(
        missing.map((id) => api(`/v1/jobs/${encodeURIComponent(id)}`).catch(() => null)),
      );
      for (const j of extra) if (j?.status === "succeeded") jobs.set(j.id, j);
      for (const id of missing) if (!jobs.has(id)) selected.delete(id);
      renderPicker([...jobs.values()]);
      renderAll();
    } catch (e) {
      ctx.notify(`Could not load jobs: ${e.message}`, "error");
    }
  })();

  return () => chart?.destroy();
}
