// job/report.js: word perplexity, bits per byte and lm-eval task figures shaped for the Results cards.

import assert from "node:assert/strict";
import test from "node:test";

import { DASH } from "../../api/static/js/format.js";
import { fmtWithErr, taskRows, textMetricRows } from "../../api/static/js/job/report.js";

const metrics = (word, bpb) => ({
  token_perplexity: 20,
  word_perplexity: word,
  byte_perplexity: 2 ** bpb,
  bits_per_byte: bpb,
  tokens: 100,
  words: 40,
  bytes: 400,
});

test("text metric rows pair each text's dense and sparse figures", () => {
  const rows = textMetricRows({
    evaluation_metrics: {
      dense: { pydoc: metrics(80.5, 1.1), wikitext2: metrics(60, 0.9) },
      sparse: { pydoc: metrics(120.25, 1.3) },
    },
  });
  assert.deepEqual(rows, [
    { source: "pydoc", denseWord: 80.5, sparseWord: 120.25, denseBpb: 1.1, sparseBpb: 1.3 },
    { source: "wikitext2", denseWord: 60, sparseWord: null, denseBpb: 0.9, sparseBpb: null },
  ]);
});

test("a report without the figures, or with dense evaluation off, gives what it has", () => {
  assert.deepEqual(textMetricRows({}), []);
  assert.deepEqual(textMetricRows({ perplexity: { dense: { pydoc: 12 } } }), []);
  const sparseOnly = textMetricRows({ evaluation_metrics: { dense: {}, sparse: { c4: metrics(50, "0.7") } } });
  assert.deepEqual(sparseOnly, [{ source: "c4", denseWord: null, sparseWord: 50, denseBpb: null, sparseBpb: 0.7 }]);
  // a text too short to count words has nulls, not NaN
  const noText = textMetricRows({ evaluation_metrics: { sparse: { pydoc: { word_perplexity: null } } } });
  assert.equal(noText[0].sparseWord, null);
});

test("task rows fold each stderr into its metric, filtered metrics included", () => {
  const rows = taskRows({
    tasks: {
      dense: {
        arc_easy: { acc: 0.6, acc_stderr: 0.02, acc_norm: 0.55, acc_norm_stderr: 0.021 },
        gsm8k: { "exact_match,strict-match": 0.1, "exact_match_stderr,strict-match": 0.01 },
      },
      sparse: {
        arc_easy: { acc: 0.5, acc_stderr: 0.022, acc_norm: 0.45, acc_norm_stderr: null },
        gsm8k: { "exact_match,strict-match": 0.05, "exact_match_stderr,strict-match": 0.006 },
      },
      samples: { arc_easy: 2376, gsm8k: 1319 },
      lm_eval: "0.4.13",
    },
  });
  assert.deepEqual(rows, [
    { task: "arc_easy", metric: "acc", dense: 0.6, sparse: 0.5, denseErr: 0.02, sparseErr: 0.022 },
    { task: "arc_easy", metric: "acc_norm", dense: 0.55, sparse: 0.45, denseErr: 0.021, sparseErr: null },
    {
      task: "gsm8k",
      metric: "exact_match,strict-match",
      dense: 0.1,
      sparse: 0.05,
      denseErr: 0.01,
      sparseErr: 0.006,
    },
  ]);
});

test("tasks run on the sparse model only, and no tasks at all", () => {
  const rows = taskRows({ tasks: { dense: null, sparse: { mc: { acc: 0.4, acc_stderr: 0.16 } } } });
  assert.deepEqual(rows, [{ task: "mc", metric: "acc", dense: null, sparse: 0.4, denseErr: null, sparseErr: 0.16 }]);
  assert.deepEqual(taskRows({}), []);
  assert.deepEqual(taskRows({ tasks: null }), []);
});

test("a figure with its stderr as lm-eval prints it", () => {
  assert.equal(fmtWithErr(0.412, 0.016), "0.4120 ± 0.0160");
  assert.equal(fmtWithErr(0.412, null), "0.4120");
  assert.equal(fmtWithErr(null, 0.1), DASH);
  assert.equal(fmtWithErr(undefined, undefined), DASH);
});
