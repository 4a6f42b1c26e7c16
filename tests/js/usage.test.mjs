// usage.js: the team's usage against its limits, as the job list's panel shows it.

import assert from "node:assert/strict";
import test from "node:test";

import { usageMeters, usageText } from "../../api/static/js/usage.js";

const GiB = 1024 ** 3;

test("each meter against its limit, storage in binary units", () => {
  const usage = {
    team: "team-a",
    queued: { used: 3, limit: 10 },
    running: { used: 1, limit: 2 },
    stored_bytes: { used: 1.2 * GiB, limit: 50 * GiB },
    retention_days: null,
  };
  assert.equal(usageText(usage), "Usage: queued 3/10 · running 1/2 · storage 1.20 GiB / 50.0 GiB");
  assert.deepEqual(
    usageMeters(usage).map((m) => [m.name, m.full]),
    [
      ["queued", false],
      ["running", false],
      ["storage", false],
    ],
  );
});

test("a null limit is no limit, never full", () => {
  const usage = {
    queued: { used: 0, limit: 1000 },
    running: { used: 4, limit: null },
    stored_bytes: { used: 0, limit: null },
  };
  assert.equal(usageText(usage), "Usage: queued 0/1000 · running 4 (no limit) · storage 0 B (no limit)");
  assert.ok(usageMeters(usage).every((m) => !m.full));
});

test("a meter at or over its limit is full", () => {
  const usage = {
    queued: { used: 10, limit: 10 },
    running: { used: 3, limit: 2 },
    stored_bytes: { used: 5, limit: 6 },
  };
  assert.deepEqual(
    usageMeters(usage).map((m) => m.full),
    [true, true, false],
  );
});

test("meters the body lacks are left out; an empty body shows nothing", () => {
  assert.equal(usageText({ queued: { used: 2, limit: 5 } }), "Usage: queued 2/5");
  assert.equal(usageText({}), "");
  assert.equal(usageText(null), "");
  assert.deepEqual(usageMeters({ running: { used: "x", limit: 1 } }), []);
});
