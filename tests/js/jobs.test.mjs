// jobs/columns.js: the job list's columns; the text cells are read under Node (the others build
// elements and are covered by the browser tests).

import assert from "node:assert/strict";
import test from "node:test";

import { DASH } from "../../api/static/js/format.js";
import { jobColumns } from "../../api/static/js/jobs/columns.js";

test("the list's columns, in order", () => {
  assert.deepEqual(
    jobColumns().map((c) => c.label),
    ["Job", "Status", "Model", "Sparsity", "Method", "Progress", "ETA", "Submitted by", "Created", "Elapsed"],
  );
});

test("text cells of a running job, against an injected now", () => {
  const now = Date.UTC(2026, 0, 1, 12, 0, 0);
  const job = {
    id: "job_1",
    status: "running",
    started_at: "2026-01-01T11:58:00Z",
    eta_seconds: 30,
    spec: { sparsity: "2:4", method: { pruner: "sparsegpt", allocation: "owl" } },
  };
  const text = Object.fromEntries(
    jobColumns(now)
      .filter((c) => ["Sparsity", "Method", "ETA", "Submitted by", "Elapsed"].includes(c.label))
      .map((c) => [c.label, c.cell(job)]),
  );
  assert.deepEqual(text, {
    Sparsity: "2:4",
    Method: "sparsegpt · owl",
    ETA: "30 s",
    "Submitted by": DASH,
    Elapsed: "2 min 0 s",
  });
});
