// The job page's pure parts: summary and progress facts, the event timeline's wording and
// cursor, and the downloads' rows.

import assert from "node:assert/strict";
import test from "node:test";

import { DASH } from "../../api/static/js/format.js";
import { artifactRows } from "../../api/static/js/job/artifacts.js";
import { progressFacts, progressFraction, summaryFacts } from "../../api/static/js/job/summary.js";
import { eventView, eventsPath } from "../../api/static/js/job/timeline.js";

const texts = (facts) => Object.fromEntries(facts.map((f) => [f.term, f.text]));

test("a terse spec reads with the API's defaults filled in", () => {
  const job = {
    status: "queued",
    spec: { model: "m", sparsity: 0.5 },
    team: "team-a",
    submitted_by: "alice",
  };
  const t = texts(summaryFacts(job));
  assert.equal(t.Model, "m");
  assert.equal(t["Sparsity target"], "50%");
  assert.equal(t.Method, DASH);
  assert.equal(t.Calibration, "pydoc · 32 × 512 tokens · seed 0");
  assert.equal(t.Evaluation, "pydoc · up to 40 windows × 512");
  assert.equal(t.Team, "team-a");
  assert.equal(t["Submitted by"], "alice");
  assert.ok(!("Induction" in t) && !("Cancel" in t) && !("Attempts" in t) && !("Resumed" in t));
});

test("a full spec, a cancel request, retries and a resume all show", () => {
  const job = {
    status: "running",
    cancel_requested: true,
    attempts: 2,
    resumes: 1,
    results: { resume: { from_layer: 4 } },
    team: { name: "team-b" },
    spec: {
      model: "/models/x",
      sparsity: "2:4",
      method: { pruner: "sparsegpt", induction: { enabled: true, epochs: 3, lr: null } },
      calibration: { source: "c4", samples: 8, seq_len: 64, seed: 1 },
      evaluation: { sources: ["pydoc", "c4"], max_windows: 2, seq_len: 32 },
    },
  };
  const facts = summaryFacts(job);
  const t = texts(facts);
  assert.equal(facts[0].cls, "mono wrap");
  assert.equal(t.Method, "sparsegpt · SI");
  // an explicit null takes the default, as the API does
  assert.equal(t.Induction, "3 epochs · lr 0.05 · reg 0.0001 · ste");
  assert.equal(t.Calibration, "c4 · 8 × 64 tokens · seed 1");
  assert.equal(t.Evaluation, "pydoc, c4 · up to 2 windows × 32");
  assert.equal(t.Team, "team-b");
  assert.match(t.Cancel, /between layers/);
  assert.equal(t.Attempts, "2");
  assert.equal(t.Resumed, "1× from a checkpoint, last from layer 5");
});

test("settings under experimental count, and induction may be a plain true", () => {
  const job = {
    status: "queued",
    spec: {
      model: "m",
      sparsity: 0.5,
      method: { pruner: "wanda", preset: "reference", induction: true },
      calibration: { samples: 8 },
      experimental: { induction: { epochs: 2, mask: "sigmoid" }, calibration: { seq_len: 64 } },
    },
  };
  const t = texts(summaryFacts(job));
  assert.equal(t.Method, "wanda · reference · SI");
  assert.equal(t.Induction, "2 epochs · lr 0.05 · reg 0.0001 · sigmoid");
  assert.equal(t.Calibration, "pydoc · 8 × 64 tokens · seed 0");
});

test("progress facts and the bar's fill", () => {
  const now = Date.UTC(2026, 0, 1, 12, 0, 0);
  const job = { status: "running", started_at: "2026-01-01T11:59:00Z", layer: 2, layers: 4, progress: 0.4 };
  const t = texts(progressFacts(job, now));
  assert.equal(t.Elapsed, "1 min 0 s");
  assert.equal(t.ETA, "estimating…");
  assert.equal(t.Layer, "2 of 4");
  assert.equal(progressFraction(job), 0.4);
  assert.equal(progressFraction({ status: "succeeded", progress: 0.97 }), 1);
  assert.equal(progressFraction({ status: "queued" }), 0);
  assert.ok(!("Layer" in texts(progressFacts({ status: "queued" }, now))));
});

test("timeline events: a status event shows the state it moved to, failures are marked", () => {
  assert.deepEqual(eventView({ type: "status", data: { to: "running" } }), {
    kind: "running",
    failed: false,
    stage: null,
    message: "",
  });
  assert.equal(eventView({ type: "status", data: { to: "failed" } }).failed, true);
  assert.equal(eventView({ type: "worker_error" }).failed, true);
  assert.equal(eventView({}).kind, "event");
  // "stage prune" repeats the stage column; another message is kept
  assert.deepEqual(eventView({ type: "stage", stage: "load_model", message: "stage load_model" }), {
    kind: "stage",
    failed: false,
    stage: "load model",
    message: "",
  });
  assert.equal(eventView({ type: "stage", stage: "prune", message: "layer 3" }).message, "layer 3");
});

test("the events cursor", () => {
  assert.equal(eventsPath("job_1", null), "/v1/jobs/job_1/events");
  assert.equal(eventsPath("job_1", 0), "/v1/jobs/job_1/events?after=0");
  assert.equal(eventsPath("a/b", 17), "/v1/jobs/a%2Fb/events?after=17");
});

test("download rows: saved name, size and a short SHA-256", () => {
  const rows = artifactRows(
    [
      { name: "report.json", size: 2048, sha256: "0123456789abcdef0123" },
      { path: "model/config.json", bytes: 10 },
    ],
    "job_9",
  );
  assert.deepEqual(rows, [
    {
      name: "report.json",
      filename: "job_9-report.json",
      sizeText: "2.00 KiB",
      sha: "0123456789abcdef0123",
      shaShort: "0123456789ab…",
    },
    {
      name: "model/config.json",
      filename: "job_9-model_config.json",
      sizeText: "10 B",
      sha: null,
      shaShort: DASH,
    },
  ]);
});
