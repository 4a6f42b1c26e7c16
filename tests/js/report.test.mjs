// job/report.js: a job's report shaped for the Results cards and the per-layer charts.

import assert from "node:assert/strict";
import test from "node:test";

import { DASH } from "../../api/static/js/format.js";
import {
  layerRows,
  num,
  perplexityRows,
  sizeFacts,
  sparsityFacts,
  stageTimings,
} from "../../api/static/js/job/report.js";

test("num keeps finite numbers only", () => {
  assert.equal(num(0), 0);
  assert.equal(num("1.5"), 1.5);
  for (const bad of [null, undefined, "", "x", NaN, Infinity]) assert.equal(num(bad), null, String(bad));
});

test("layer rows read every spelling a report has used", () => {
  const rows = layerRows({
    layers: [
      { index: 0, target: 0.5, sparsity: 0.49, rel_error: 0.1, induction: null },
      { index: 1, achieved_sparsity: 0.51 },
      {
        index: 2,
        rel_error: 0.3,
        error_vs: "dense model",
        recovery: { identity_loss: 0.02, final_loss: 0.015 },
      },
      { name: "model.layers.3", achieved: "0.5", induction: { losses: ["3", 2, 1] } },
    ],
  });
  assert.deepEqual(rows[0], {
    label: "0",
    target: 0.5,
    sparsity: 0.49,
    relError: 0.1,
    errorVs: null,
    losses: null,
    recovery: null,
  });
  assert.equal(rows[1].sparsity, 0.51);
  assert.equal(rows[1].relError, null);
  assert.deepEqual(rows[2].recovery, { pruned: 0.02, recovered: 0.015 });
  assert.equal(rows[2].errorVs, "dense model");
  assert.equal(rows[3].label, "model.layers.3");
  assert.equal(rows[3].sparsity, 0.5);
  assert.deepEqual(rows[3].losses, [3, 2, 1]);
  assert.deepEqual(layerRows({}), []);
  assert.deepEqual(layerRows(null), []);
});

test("perplexity per text, flat or nested", () => {
  assert.deepEqual(perplexityRows({ perplexity: { dense: 10, sparse: 12 } }), [
    { source: "", dense: 10, sparse: 12 },
  ]);
  const nested = perplexityRows({ perplexity: { dense: { pydoc: 10 }, sparse: { pydoc: 12, c4: 30 } } });
  assert.deepEqual(nested, [
    { source: "pydoc", dense: 10, sparse: 12 },
    { source: "c4", dense: null, sparse: 30 },
  ]);
  assert.deepEqual(perplexityRows({}), []);
});

test("sparsity facts show optional checks only when reported", () => {
  const facts = sparsityFacts({ sparsity: { mean: 0.5, min: 0.49, max: 0.51 } }, { sparsity: "2:4" });
  assert.deepEqual(
    facts.map((f) => [f.term, f.text]),
    [
      ["Target", "2:4"],
      ["Mean", "50.00%"],
      ["Min", "49.00%"],
      ["Max", "51.00%"],
    ],
  );
  assert.equal(facts[1].strong, true);
  const nm = sparsityFacts({ sparsity: { mean: 0.5, overall: 0.48, nm_valid: false } }, { sparsity: "2:4" });
  assert.deepEqual(nm.find((f) => f.term === "N:M pattern").text, "violated");
  assert.equal(nm.find((f) => f.term === "Overall (by weight)").text, "48.00%");
});

test("size facts compare the compact artifact with the dense weights", () => {
  const facts = sizeFacts({ sizes: { dense_bytes: 4096, hf_bytes: 4096, compact_bytes: 1024 } });
  assert.deepEqual(
    facts.map((f) => [f.term, f.text]),
    [
      ["Dense", "4.00 KiB"],
      ["HF folder", "4.00 KiB"],
      ["Compact", "1.00 KiB"],
      ["Compact / dense", "25.0%"],
    ],
  );
  assert.equal(sizeFacts({}).length, 3);
  assert.equal(sizeFacts({}).at(-1).text, DASH);
});

test("stage timings are bars against the run's wall time", () => {
  const t = stageTimings({ timings: { load: 1, prune: 3, evaluate: "x", total: 8 } });
  assert.deepEqual(
    t.stages.map((s) => [s.label, s.percent, s.text]),
    [
      ["load", 12.5, "1.0 s"],
      ["prune", 37.5, "3.0 s"],
    ],
  );
  assert.equal(t.total, 8);
  assert.equal(t.totalText, "8.0 s");
  // without a total, the stages' sum is the whole
  const summed = stageTimings({ timings: { load_model: 1, prune: 3 } });
  assert.equal(summed.total, 4);
  assert.deepEqual(
    summed.stages.map((s) => [s.label, s.percent]),
    [
      ["load model", 25],
      ["prune", 75],
    ],
  );
  assert.deepEqual(stageTimings({}), { stages: [], total: null, totalText: DASH });
});
