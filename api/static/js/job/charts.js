// Per-layer charts of a job's report: achieved sparsity, the layer error, Sparsity Induction's
// loss per step and the recovery scales' held-out loss. layerChartSpecs is pure (what to plot,
// tested under Node); the other two make the cards and draw with ../charts.js.

import * as charts from "../charts.js";
import { h } from "../dom.js";
import { sparsityFraction } from "../format.js";

const GREY = "#94a3b8";

function sparsityChart(layers, labels, target) {
  const targets = layers.map((l) => l.target ?? target);
  const datasets = [{ label: "achieved", data: layers.map((l) => l.sparsity) }];
  // A dashed line at the target, per layer where allocation gives each its own.
  if (targets.some((t) => t !== null))
    datasets.push({
      label: "target",
      type: "line",
      data: targets,
      color: GREY,
      pointRadius: 0,
      borderDash: [6, 4],
    });
  return {
    id: "chart-sparsity",
    title: "Sparsity per layer",
    label: "Achieved sparsity per layer",
    config: { kind: "bar", labels, xTitle: "layer", yTitle: "zeros", yPercent: true, datasets },
  };
}

function errorChart(layers, labels) {
  // The linear-by-linear walk measures each layer against the dense model (docs/pruners.md).
  const vsModel = layers.some((l) => l.errorVs === "dense model");
  return {
    id: "chart-error",
    title: vsModel ? "Error against the dense model per layer" : "Reconstruction error per layer",
    label: vsModel
      ? "Relative error of each layer's output against the dense model's"
      : "Relative reconstruction error per layer",
    config: {
      kind: "bar",
      labels,
      xTitle: "layer",
      yTitle: vsModel ? "relative error vs the dense model ‖Y − Ŷ‖ / ‖Y‖" : "relative error ‖WX − ŴX‖ / ‖WX‖",
      datasets: [{ label: "relative error", data: layers.map((l) => l.relError), color: "#d97706" }],
    },
  };
}

function lossChart(withLosses) {
  const steps = Math.max(...withLosses.map((l) => l.losses.length));
  return {
    id: "chart-induction",
    title: "Sparsity Induction loss",
    label: "Sparsity Induction loss per step, one line per layer",
    wide: true,
    config: {
      kind: "line",
      labels: Array.from({ length: steps }, (_, i) => i + 1),
      xTitle: "step",
      yTitle: "loss",
      yLog: charts.wantsLog(withLosses.flatMap((l) => l.losses)),
      datasets: withLosses.map((l) => ({ label: `layer ${l.label}`, data: l.losses, fill: false })),
    },
  };
}

function recoveryChart(withRecovery) {
  const pruned = withRecovery.map((l) => l.recovery.pruned);
  const recovered = withRecovery.map((l) => l.recovery.recovered);
  return {
    id: "chart-recovery",
    title: "Recovery scales: held-out loss per layer",
    label: "Held-out loss of each layer as pruned and after the recovery scales",
    wide: true,
    config: {
      kind: "bar",
      labels: withRecovery.map((l) => l.label),
      xTitle: "layer",
      yTitle: "relative MSE on held-out sequences",
      yLog: charts.wantsLog([...pruned, ...recovered]),
      datasets: [
        { label: "as pruned", data: pruned, color: GREY },
        { label: "recovered", data: recovered, color: "#16a34a" },
      ],
    },
  };
}

/**
 * The charts for `layers` (job/report.js layerRows) against the spec's sparsity target:
 * [{id, title, label, wide?, config}] where config is what ../charts.js draw takes. The
 * induction and recovery charts appear only when some layer reports their figures.
 */
export function layerChartSpecs(layers, sparsity) {
  if (!layers.length) return [];
  const labels = layers.map((l) => l.label);
  const specs = [sparsityChart(layers, labels, sparsityFraction(sparsity)), errorChart(layers, labels)];
  const withLosses = layers.filter((l) => l.losses && l.losses.length);
  if (withLosses.length) specs.push(lossChart(withLosses));
  const withRecovery = layers.filter((l) => l.recovery);
  if (withRecovery.length) specs.push(recoveryChart(withRecovery));
  return specs;
}

/** A card and canvas per spec: narrow charts side by side, wide ones on their own row. */
export function layerChartCards(specs) {
  const canvases = specs.map((s) => h("canvas", { id: s.id, role: "img", "aria-label": s.label }));
  const card = (s, i) =>
    h(
      "section",
      { class: "card" },
      h("h2", {}, s.title),
      h("div", { class: s.wide ? "chart chart-wide" : "chart" }, canvases[i]),
    );
  const narrow = specs.map((s, i) => (s.wide ? null : card(s, i))).filter(Boolean);
  const wide = specs.map((s, i) => (s.wide ? card(s, i) : null)).filter(Boolean);
  return { nodes: [narrow.length ? h("div", { class: "two-col" }, narrow) : null, ...wide], canvases };
}

/** Draw every spec on its canvas; null when the chart library did not load. */
export function drawLayerCharts(specs, canvases) {
  if (!charts.available()) return null;
  return specs.map((s, i) => charts.draw(canvases[i], s.config));
}
