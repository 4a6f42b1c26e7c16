// views/sweeps.js: the chart's series and the table's figures of a sweep, from the API's shape.

import assert from "node:assert/strict";
import test from "node:test";

import { rowLabel, sweepColumns, sweepCurve } from "../../api/static/js/views/sweeps.js";

function row(job, target, sparsity, sparse, status = "succeeded") {
  return {
    job,
    target,
    pruner: "wanda",
    preset: null,
    status,
    sparsity,
    perplexity: { dense: sparsity === null ? {} : { pydoc: 10 }, sparse: sparse === null ? {} : { pydoc: sparse } },
    hf_bytes: 2048,
    compact_bytes: 1024,
  };
}

const sweep = {
  text: "pydoc",
  table: [
    row("job_a", 0.5, 0.5, 12),
    row("job_b", "2:4", 0.5, 14),
    row("job_c", 0.7, 0.7, 20),
    row("job_d", 0.9, null, null, "running"),
  ],
  pareto: [row("job_c", 0.7, 0.7, 20), row("job_a", 0.5, 0.5, 12)],
};

test("the curve has one point per finished row and the front by sparsity", () => {
  const curve = sweepCurve(sweep);
  assert.equal(curve.text, "pydoc");
  assert.equal(curve.dense, 10);
  assert.deepEqual(curve.points.map((p) => [p.job, p.x, p.y, p.pareto]), [
    ["job_a", 0.5, 12, true],
    ["job_b", 0.5, 14, false],
    ["job_c", 0.7, 20, true],
  ]);
  assert.deepEqual(curve.pareto.map((p) => p.job), ["job_a", "job_c"]);
});

test("a sweep without evaluation has no points", () => {
  const curve = sweepCurve({ ...sweep, text: null, pareto: [] });
  assert.deepEqual([curve.points, curve.pareto, curve.dense], [[], [], null]);
});

test("a row is labelled by its grid cell and the columns read its figures", () => {
  assert.equal(rowLabel({ target: "2:4", pruner: "sparsegpt", preset: "reference" }), "2:4 sparsegpt reference");
  assert.equal(rowLabel({ target: 0.5, pruner: null, preset: null }), "50%");
  const columns = sweepColumns("pydoc", new Set(["job_a"]), "job_a");
  const byLabel = Object.fromEntries(columns.map((c) => [c.label, c]));
  const r = sweep.table[0];
  assert.equal(byLabel["Sparse ppl (pydoc)"].cell(r), "12.00");
  assert.equal(byLabel["Dense ppl (pydoc)"].cell(r), "10.00");
  assert.equal(byLabel["Achieved"].cell(r), "50.00%");
  assert.equal(byLabel["Pareto"].cell(r), "on the front · best within");
  assert.equal(byLabel["Pareto"].cell(sweep.table[1]), "—");
  assert.equal(byLabel["Preset"].cell(r), "—");
});
