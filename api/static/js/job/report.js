// A job's report (results) shaped for display. Pure functions, no DOM: the job view's modules
// render what these return, and tests/js checks them under Node.
//
// A fact is {term, text, strong?, title?, cls?}; dom.js factList renders a list of them.

import { DASH, fmtBytes, fmtDuration, fmtNum, fmtPct, fmtSparsity, humanStage } from "../format.js";

/** A finite number, or null for anything else (missing, NaN, a string that is not a number). */
export function num(v) {
  return v === null || v === undefined || v === "" || !Number.isFinite(Number(v)) ? null : Number(v);
}

/** Per-layer rows of a report, whatever their exact field names turn out to be. */
export function layerRows(results) {
  const layers = Array.isArray(results?.layers) ? results.layers : [];
  return layers.map((l, i) => ({
    label: l.name ?? (l.index !== undefined ? `${l.index}` : `${i}`),
    target: num(l.target ?? l.target_sparsity),
    sparsity: num(l.sparsity ?? l.achieved ?? l.achieved_sparsity),
    relError: num(l.rel_error ?? l.relative_error ?? l.reconstruction_error),
    // "dense model": the layer's output against the dense model's (docs/pruners.md,
    // "Linears in turn"); absent: against the dense layer on the same inputs.
    errorVs: l.error_vs ?? null,
    losses: Array.isArray(l.induction?.losses) ? l.induction.losses.map(Number) : null,
    // induction's recovery scales (docs/induction.md, "Recovery"): held-out loss of the layer as
    // the pruner left it and as folded
    recovery: l.recovery
      ? { pruned: num(l.recovery.identity_loss), recovered: num(l.recovery.final_loss) }
      : null,
  }));
}

/** [{source, dense, sparse}] from results.perplexity, tolerant of a flat {dense: 12.3, sparse: 18}. */
export function perplexityRows(results) {
  const p = results?.perplexity || {};
  const dense = p.dense;
  const sparse = p.sparse;
  if (typeof dense === "number" || typeof sparse === "number")
    return [{ source: "", dense: num(dense), sparse: num(sparse) }];
  const sources = new Set([...Object.keys(dense || {}), ...Object.keys(sparse || {})]);
  return [...sources].map((source) => ({
    source,
    dense: num(dense?.[source]),
    sparse: num(sparse?.[source]),
  }));
}

/** Achieved sparsity against the spec's target; optional fields appear only when reported. */
export function sparsityFacts(results, spec) {
  const sp = results?.sparsity || {};
  // Older reports call the N:M check nm_valid.
  const nmOk = sp.nm_ok ?? sp.nm_valid;
  return [
    { term: "Target", text: fmtSparsity(spec?.sparsity) },
    { term: "Mean", text: fmtPct(sp.mean, 2), strong: true },
    sp.overall === undefined ? null : { term: "Overall (by weight)", text: fmtPct(sp.overall, 2) },
    { term: "Min", text: fmtPct(sp.min, 2) },
    { term: "Max", text: fmtPct(sp.max, 2) },
    nmOk === undefined || nmOk === null
      ? null
      : { term: "N:M pattern", text: nmOk ? "every group obeys" : "violated" },
  ].filter(Boolean);
}

/** The dense weights, the Hugging Face folder and the compact artifact, and how much it saves. */
export function sizeFacts(results) {
  const sizes = results?.sizes || {};
  const dense = num(sizes.dense_bytes);
  const compact = num(sizes.compact_bytes);
  return [
    { term: "Dense", text: fmtBytes(dense) },
    { term: "HF folder", text: fmtBytes(sizes.hf_bytes), title: "Hugging Face folder, zeros in place" },
    { term: "Compact", text: fmtBytes(compact), strong: true, title: "compressed-tensors sparse bitmask" },
    dense && compact ? { term: "Compact / dense", text: fmtPct(compact / dense, 1) } : null,
  ].filter(Boolean);
}

/**
 * Time per stage as bars: [{label, seconds, text, percent}] and the total. "total" in the report
 * is the run's wall time (the stages do not add up to it exactly); without it, their sum.
 */
export function stageTimings(results) {
  const timings = results?.timings || {};
  const entries = Object.entries(timings).filter(([k, v]) => k !== "total" && num(v) !== null);
  const summed = entries.reduce((a, [, v]) => a + Number(v), 0);
  const total = num(timings.total) ?? summed;
  return {
    stages: entries.map(([stage, v]) => ({
      label: humanStage(stage),
      seconds: Number(v),
      text: fmtDuration(Number(v)),
      percent: total ? Math.min(100, (100 * Number(v)) / total) : 0,
    })),
    total: total || null,
    totalText: total ? fmtDuration(total) : DASH,
  };
}

/**
 * Word perplexity and bits per byte per evaluation text (lm-evaluation-harness' definitions,
 * docs/evaluation.md), from results.evaluation_metrics {dense: {text: {...}}, sparse: {...}}:
 * [{source, denseWord, sparseWord, denseBpb, sparseBpb}]; [] for a report without them.
 */
export function textMetricRows(results) {
  const m = results?.evaluation_metrics || {};
  const dense = m.dense || {};
  const sparse = m.sparse || {};
  const sources = new Set([...Object.keys(dense), ...Object.keys(sparse)]);
  return [...sources].map((source) => ({
    source,
    denseWord: num(dense[source]?.word_perplexity),
    sparseWord: num(sparse[source]?.word_perplexity),
    denseBpb: num(dense[source]?.bits_per_byte),
    sparseBpb: num(sparse[source]?.bits_per_byte),
  }));
}

/**
 * lm-evaluation-harness task figures from results.tasks {dense: {task: {metric: value}}, sparse}:
 * one row per task and metric, [{task, metric, dense, sparse, denseErr, sparseErr}], a metric's
 * "<name>_stderr" folded into its row (a filtered metric "name,filter" has "name_stderr,filter").
 */
export function taskRows(results) {
  const t = results?.tasks || {};
  const dense = t.dense || {};
  const sparse = t.sparse || {};
  const stderrKey = (metric) => {
    const [name, ...filter] = metric.split(",");
    return [`${name}_stderr`, ...filter].join(",");
  };
  const isStderr = (metric) => metric.split(",")[0].endsWith("_stderr");
  const rows = [];
  for (const task of new Set([...Object.keys(dense), ...Object.keys(sparse)])) {
    const d = dense[task] || {};
    const s = sparse[task] || {};
    for (const metric of new Set([...Object.keys(d), ...Object.keys(s)])) {
      if (isStderr(metric)) continue;
      const err = stderrKey(metric);
      rows.push({
        task,
        metric,
        dense: num(d[metric]),
        sparse: num(s[metric]),
        denseErr: num(d[err]),
        sparseErr: num(s[err]),
      });
    }
  }
  return rows;
}

/** "0.4120 ± 0.0160": a task figure and its standard error as lm-eval prints them; the figure alone without one. */
export function fmtWithErr(value, stderr) {
  const v = num(value);
  const err = num(stderr);
  return v === null || err === null ? fmtNum(v, 4) : `${fmtNum(v, 4)} ± ${fmtNum(err, 4)}`;
}
