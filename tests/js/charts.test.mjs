// job/charts.js and charts.js: which per-layer charts a report gets and what they plot.

import assert from "node:assert/strict";
import test from "node:test";

import { wantsLog } from "../../api/static/js/charts.js";
import { layerChartSpecs } from "../../api/static/js/job/charts.js";
import { layerRows } from "../../api/static/js/job/report.js";

const plain = layerRows({
  layers: [
    { index: 0, sparsity: 0.49, rel_error: 0.1 },
    { index: 1, sparsity: 0.51, rel_error: 0.2, target: 0.6 },
  ],
});

test("a log axis only for positive values spanning more than a decade", () => {
  assert.equal(wantsLog([1, 5, 9]), false);
  assert.equal(wantsLog([0.1, 5, 20]), true);
  assert.equal(wantsLog([0, 100]), false);
  assert.equal(wantsLog([null, 1, 1000]), true);
  assert.equal(wantsLog([]), false);
});

test("a report without layers has no charts", () => {
  assert.deepEqual(layerChartSpecs([], 0.5), []);
});

test("sparsity and error per layer, the target line from the spec where a layer has none", () => {
  const specs = layerChartSpecs(plain, "2:4");
  assert.deepEqual(
    specs.map((s) => s.id),
    ["chart-sparsity", "chart-error"],
  );
  const [sparsity, error] = specs;
  assert.deepEqual(sparsity.config.labels, ["0", "1"]);
  assert.deepEqual(sparsity.config.datasets[0].data, [0.49, 0.51]);
  assert.equal(sparsity.config.datasets[1].label, "target");
  assert.deepEqual(sparsity.config.datasets[1].data, [0.5, 0.6]);
  assert.equal(sparsity.config.yPercent, true);
  assert.deepEqual(error.config.datasets[0].data, [0.1, 0.2]);
  assert.equal(error.title, "Reconstruction error per layer");
  assert.ok(specs.every((s) => !s.wide));
});

test("no target line when neither the spec nor a layer gives one", () => {
  const rows = layerRows({ layers: [{ index: 0, sparsity: 0.5 }] });
  const [sparsity] = layerChartSpecs(rows, undefined);
  assert.equal(sparsity.config.datasets.length, 1);
});

test("errors measured against the dense model are titled so", () => {
  const rows = layerRows({ layers: [{ index: 0, rel_error: 0.3, error_vs: "dense model" }] });
  const error = layerChartSpecs(rows, 0.5)[1];
  assert.equal(error.title, "Error against the dense model per layer");
  assert.match(error.config.yTitle, /dense model/);
});

test("induction losses: one line per layer that has them, steps up to the longest", () => {
  const rows = layerRows({
    layers: [
      { index: 0, induction: { losses: [100, 10, 1] } },
      { index: 1, induction: { losses: [5, 4] } },
      { index: 2 },
    ],
  });
  const loss = layerChartSpecs(rows, 0.5).find((s) => s.id === "chart-induction");
  assert.equal(loss.wide, true);
  assert.deepEqual(loss.config.labels, [1, 2, 3]);
  assert.deepEqual(
    loss.config.datasets.map((d) => [d.label, d.data]),
    [
      ["layer 0", [100, 10, 1]],
      ["layer 1", [5, 4]],
    ],
  );
  assert.equal(loss.config.yLog, true);
});

test("recovery: held-out loss as pruned and recovered for the layers that report it", () => {
  const rows = layerRows({
    layers: [
      { index: 0, recovery: { identity_loss: 0.02, final_loss: 0.015 } },
      { index: 1 },
      { index: 2, recovery: { identity_loss: 0.04, final_loss: 0.01 } },
    ],
  });
  const rec = layerChartSpecs(rows, 0.5).find((s) => s.id === "chart-recovery");
  assert.deepEqual(rec.config.labels, ["0", "2"]);
  assert.deepEqual(rec.config.datasets[0].data, [0.02, 0.04]);
  assert.deepEqual(rec.config.datasets[1].data, [0.015, 0.01]);
  assert.equal(rec.config.yLog, false);
});
