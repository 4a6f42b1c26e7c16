// What a job asked for and where it stands, as facts for the job page's Summary and Progress
// cards. Pure (no DOM): tests/js checks the wording and the defaults shown.

import {
  DASH,
  elapsedSeconds,
  fmtClock,
  fmtDuration,
  fmtEta,
  fmtMethod,
  fmtSparsity,
  fmtTime,
  inductionOn,
  isTerminal,
} from "../format.js";

// Fields left out of a job body take the API's defaults (core/spec); the summary shows those
// values so a terse spec still reads completely.
const DEFAULTS = {
  induction: { epochs: 1, lr: 0.05, reg: 0.0001, mask: "ste" },
  calibration: { source: "pydoc", samples: 32, seq_len: 512, seed: 0 },
  evaluation: { sources: ["pydoc"], max_windows: 40, seq_len: 512 },
};

function inductionText(ind) {
  const d = { ...DEFAULTS.induction, ...ind };
  return `${d.epochs} epochs · lr ${d.lr} · reg ${d.reg} · ${d.mask}`;
}

function calibrationText(c) {
  const d = { ...DEFAULTS.calibration, ...c };
  return `${d.source} · ${d.samples} × ${d.seq_len} tokens · seed ${d.seed}`;
}

function evaluationText(ev) {
  const d = { ...DEFAULTS.evaluation, ...ev };
  return `${[].concat(d.sources).join(", ")} · up to ${d.max_windows} windows × ${d.seq_len}`;
}

// A section's settings: its public options and those under `experimental` (where the schema
// keeps the non-public ones, core/spec/schema.py), the latter winning as they do in the API.
function settings(spec, name, pub) {
  const own = pub && typeof pub === "object" ? pub : {};
  return { ...withoutNulls(own), ...withoutNulls(spec.experimental?.[name]) };
}

/** The Summary card: the spec in words, who submitted it, and when it ran. */
export function summaryFacts(job) {
  const s = job?.spec || {};
  const resume = job?.results?.resume;
  return [
    { term: "Model", text: s.model || DASH, cls: "mono wrap" },
    { term: "Sparsity target", text: fmtSparsity(s.sparsity) },
    { term: "Method", text: fmtMethod(s.method) },
    inductionOn(s.method)
      ? { term: "Induction", text: inductionText(settings(s, "induction", s.method.induction)) }
      : null,
    { term: "Calibration", text: calibrationText(settings(s, "calibration", s.calibration)) },
    { term: "Evaluation", text: evaluationText(settings(s, "evaluation", s.evaluation)) },
    { term: "Submitted by", text: job?.submitted_by || DASH },
    { term: "Team", text: job?.team?.name ?? job?.team ?? DASH },
    job?.cancel_requested && !isTerminal(job)
      ? { term: "Cancel", text: "requested; the worker stops between layers" }
      : null,
    { term: "Created", text: fmtTime(job?.created_at) },
    { term: "Started", text: fmtTime(job?.started_at) },
    { term: "Finished", text: fmtTime(job?.finished_at) },
    job?.attempts > 1 ? { term: "Attempts", text: String(job.attempts) } : null,
    // A worker was lost and the job went on from its per-layer checkpoint (docs/service.md).
    job?.resumes > 0
      ? {
          term: "Resumed",
          text: `${job.resumes}× from a checkpoint${resume ? `, last from layer ${resume.from_layer + 1}` : ""}`,
        }
      : null,
  ].filter(Boolean);
}

/** The Progress card's figures under the bar; `now` is injected so tests need no clock. */
export function progressFacts(job, now = Date.now()) {
  return [
    { term: "Elapsed", text: fmtDuration(elapsedSeconds(job, now)) },
    { term: "ETA", text: fmtEta(job) },
    job?.layers ? { term: "Layer", text: `${job.layer ?? 0} of ${job.layers}` } : null,
    { term: "Updated", text: fmtClock(job?.updated_at) },
  ].filter(Boolean);
}

/** The bar's fill: a succeeded job is full whatever its last progress report said. */
export function progressFraction(job) {
  return job?.status === "succeeded" ? 1 : (job?.progress ?? 0);
}

// `{...defaults, ...given}` would let an explicit null hide a default; `??` semantics need this.
function withoutNulls(obj) {
  return Object.fromEntries(Object.entries(obj || {}).filter(([, v]) => v !== null && v !== undefined));
}
