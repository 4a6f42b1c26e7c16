// format.js: every formatter takes a missing value and shows a dash instead of "NaN" or "null".

import assert from "node:assert/strict";
import test from "node:test";

import * as f from "../../api/static/js/format.js";

test("missing values show a dash", () => {
  for (const fn of [f.fmtDuration, f.fmtBytes, f.fmtPct, f.fmtNum, f.fmtSparsity, f.fmtMethod, f.fmtModel]) {
    assert.equal(fn(null), f.DASH, fn.name);
    assert.equal(fn(undefined), f.DASH, fn.name);
  }
  assert.equal(f.fmtTime("not a time"), f.DASH);
  assert.equal(f.fmtRatio(12, null), f.DASH);
  assert.equal(f.fmtRatio(12, 0), f.DASH);
});

test("a timestamp without a zone is UTC, not local time", () => {
  assert.equal(f.parseTime("2026-01-02T03:04:05"), Date.UTC(2026, 0, 2, 3, 4, 5));
  assert.equal(f.parseTime("2026-01-02T03:04:05+01:00"), Date.UTC(2026, 0, 2, 2, 4, 5));
  assert.equal(f.parseTime("2026-01-02T03:04:05Z"), Date.UTC(2026, 0, 2, 3, 4, 5));
  assert.equal(f.parseTime(""), null);
});

test("durations pick their unit", () => {
  assert.equal(f.fmtDuration(0.25), "250 ms");
  assert.equal(f.fmtDuration(3.14), "3.1 s");
  assert.equal(f.fmtDuration(42.4), "42 s");
  assert.equal(f.fmtDuration(125), "2 min 5 s");
  assert.equal(f.fmtDuration(3 * 3600 + 7 * 60), "3 h 7 min");
  assert.equal(f.fmtDuration(-5), "0 ms");
});

test("relative times count back from an injected now", () => {
  const now = Date.UTC(2026, 0, 1, 12, 0, 0);
  assert.equal(f.fmtRelative("2026-01-01T11:59:58Z", now), "just now");
  assert.equal(f.fmtRelative("2026-01-01T11:59:30Z", now), "30 s ago");
  assert.equal(f.fmtRelative("2026-01-01T11:45:00Z", now), "15 min ago");
  assert.equal(f.fmtRelative("2026-01-01T09:00:00Z", now), "3 h ago");
});

test("elapsed time runs until the job finished, or until now while it runs", () => {
  const now = Date.UTC(2026, 0, 1, 12, 0, 0);
  const started = "2026-01-01T11:00:00Z";
  assert.equal(f.elapsedSeconds({ status: "running", started_at: started }, now), 3600);
  const done = { status: "succeeded", started_at: started, finished_at: "2026-01-01T11:00:30Z" };
  assert.equal(f.elapsedSeconds(done, now), 30);
  // a terminal job without finished_at ends at its last update, not at now
  const lost = { status: "failed", started_at: started, updated_at: "2026-01-01T11:01:00Z" };
  assert.equal(f.elapsedSeconds(lost, now), 60);
  assert.equal(f.elapsedSeconds({ status: "queued" }, now), null);
});

test("bytes in binary units", () => {
  assert.equal(f.fmtBytes(512), "512 B");
  assert.equal(f.fmtBytes(3 * 1024 * 1024), "3.00 MiB");
  assert.equal(f.fmtBytes(50 * 1024 ** 3), "50.0 GiB");
  assert.equal(f.fmtBytes("2048"), "2.00 KiB");
});

test("percentages, numbers and ratios", () => {
  assert.equal(f.fmtPct(0.5123, 2), "51.23%");
  assert.equal(f.fmtPct(0.5), "50.0%");
  assert.equal(f.fmtNum(12.3456), "12.35");
  assert.equal(f.fmtNum(123456), "1.23e+5");
  assert.equal(f.fmtRatio(18, 12), "×1.50");
});

test("sparsity targets as ratio or N:M", () => {
  assert.equal(f.fmtSparsity(0.5), "50%");
  assert.equal(f.fmtSparsity(0.625), "62.5%");
  assert.equal(f.fmtSparsity("2:4"), "2:4");
  assert.equal(f.sparsityFraction("2:4"), 0.5);
  assert.equal(f.sparsityFraction(" 1 : 4 "), 0.75);
  assert.equal(f.sparsityFraction(0.7), 0.7);
  assert.equal(f.sparsityFraction("0.6"), 0.6);
  assert.equal(f.sparsityFraction("dense"), null);
});

test("methods, models and ids are shortened for tables", () => {
  assert.equal(
    f.fmtMethod({ pruner: "sparsegpt", allocation: "owl", induction: { enabled: true } }),
    "sparsegpt · owl · SI",
  );
  assert.equal(f.fmtMethod({ allocation: "uniform" }), "wanda");
  assert.equal(f.fmtMethod({ pruner: "magnitude", preset: "default", induction: true }), "magnitude · SI");
  assert.equal(
    f.fmtMethod({ pruner: "wanda", preset: "reference", induction: { enabled: false } }),
    "wanda · reference",
  );
  assert.equal(f.fmtModel("HuggingFaceTB/SmolLM2-135M"), "HuggingFaceTB/SmolLM2-135M");
  assert.equal(f.fmtModel("/models/tiny/llama-4x64"), "…/llama-4x64");
  assert.equal(f.fmtModel("smollm2-135m"), "smollm2-135m");
  assert.equal(f.shortId("job_0123456789abcdef"), "job_01234567…");
  assert.equal(f.shortId("job_1"), "job_1");
});

test("the stage caption under a progress bar", () => {
  assert.equal(f.fmtStage({ status: "queued" }), "waiting for a worker");
  assert.equal(
    f.fmtStage({ status: "running", stage: "prune", layer: 3, layers: 30 }),
    "prune · layer 3 of 30",
  );
  assert.equal(
    f.fmtStage({ status: "running", stage: "prune", cancel_requested: true }),
    "cancelling · prune",
  );
  assert.equal(f.fmtStage({ status: "running" }), "starting");
  assert.equal(f.fmtStage({ status: "failed", stage: "load_model" }), "failed during load model");
  assert.equal(f.fmtEta({ status: "running" }), "estimating…");
  assert.equal(f.fmtEta({ status: "running", eta_seconds: 90 }), "1 min 30 s");
  assert.equal(f.fmtEta({ status: "succeeded", eta_seconds: 90 }), f.DASH);
});
