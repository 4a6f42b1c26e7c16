// The Results section of a succeeded job: perplexity (per token, and per word and per byte as
// lm-evaluation-harness defines them), lm-eval task figures where the job ran tasks, achieved
// sparsity, sizes, time per stage, then the per-layer charts (job/charts.js).

import { append, clear, factList, h } from "../dom.js";
import { fmtNum, fmtRatio } from "../format.js";
import { table } from "../table.js";
import { drawLayerCharts, layerChartCards, layerChartSpecs } from "./charts.js";
import {
  fmtWithErr,
  layerRows,
  perplexityRows,
  sizeFacts,
  sparsityFacts,
  stageTimings,
  taskRows,
  textMetricRows,
} from "./report.js";

const PERPLEXITY_COLUMNS = [
  { label: "Text", header: true, cell: (r) => r.source || "all" },
  { label: "Dense", num: true, cell: (r) => fmtNum(r.dense) },
  { label: "Sparse", num: true, cell: (r) => fmtNum(r.sparse) },
  { label: "Change", num: true, cell: (r) => fmtRatio(r.sparse, r.dense) },
];

const TEXT_METRIC_COLUMNS = [
  { label: "Text", header: true, cell: (r) => r.source },
  { label: "Word ppl dense", num: true, cell: (r) => fmtNum(r.denseWord) },
  { label: "Word ppl sparse", num: true, cell: (r) => fmtNum(r.sparseWord) },
  { label: "Bits/byte dense", num: true, cell: (r) => fmtNum(r.denseBpb, 3) },
  { label: "Bits/byte sparse", num: true, cell: (r) => fmtNum(r.sparseBpb, 3) },
];

const TASK_COLUMNS = [
  { label: "Task", header: true, cell: (r) => r.task },
  { label: "Metric", cell: (r) => r.metric },
  { label: "Dense", num: true, cell: (r) => fmtWithErr(r.dense, r.denseErr) },
  { label: "Sparse", num: true, cell: (r) => fmtWithErr(r.sparse, r.sparseErr) },
];

function statCard(title, body) {
  return h("section", { class: "card stat-card" }, h("h2", {}, title), body);
}

function muted(text) {
  return h("p", { class: "muted" }, text);
}

function timingBars(results) {
  const { stages, total, totalText } = stageTimings(results);
  if (!stages.length) return muted("No timings in the report.");
  return h(
    "ul",
    { class: "bars", "data-testid": "timings" },
    stages.map((s) => {
      const fill = h("span", { class: "bar-fill" });
      // A CSSOM width, not a style attribute: the page's content security policy allows it.
      fill.style.width = `${s.percent}%`;
      return h(
        "li",
        {},
        h("span", { class: "bar-label" }, s.label),
        h("span", { class: "bar-track", "aria-hidden": "true" }, fill),
        h("span", { class: "bar-value" }, s.text),
      );
    }),
    total
      ? h(
          "li",
          { class: "bars-total" },
          h("span", { class: "bar-label" }, "total"),
          h("span"),
          h("span", { class: "bar-value" }, totalText),
        )
      : null,
  );
}

/**
 * Fill `container` with the results of `job` (which has succeeded) and draw its charts.
 * Returns the Chart instances, for the view to destroy when it goes.
 */
export function renderResults(container, job) {
  const r = job.results || {};
  const ppl = perplexityRows(r);
  const perText = textMetricRows(r);
  const tasks = taskRows(r);
  const layers = layerRows(r);
  const specs = layerChartSpecs(layers, job.spec?.sparsity);
  const cards = layerChartCards(specs);
  append(clear(container), [
    h("h2", { class: "section-title" }, "Results"),
    h(
      "div",
      { class: "stat-grid" },
      statCard(
        "Perplexity",
        ppl.length
          ? table(PERPLEXITY_COLUMNS, ppl, { class: "table compact", "data-testid": "perplexity" })
          : muted("No perplexity in the report."),
      ),
      perText.length
        ? statCard(
            "Per word and per byte",
            table(TEXT_METRIC_COLUMNS, perText, { class: "table compact", "data-testid": "text-metrics" }),
          )
        : null,
      tasks.length
        ? statCard("lm-eval tasks", table(TASK_COLUMNS, tasks, { class: "table compact", "data-testid": "tasks" }))
        : null,
      statCard("Achieved sparsity", factList(sparsityFacts(r, job.spec))),
      statCard("Size", factList(sizeFacts(r))),
      statCard("Time per stage", timingBars(r)),
    ),
    layers.length ? cards.nodes : muted("The report has no per-layer figures."),
  ]);
  container.hidden = false;
  if (!layers.length) return [];
  const drawn = drawLayerCharts(specs, cards.canvases);
  if (drawn === null) container.append(muted("Charts are unavailable: the chart library did not load."));
  return drawn || [];
}
