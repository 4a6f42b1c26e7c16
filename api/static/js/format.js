// Formatting of job fields for display. Every function accepts missing values and returns "—".

export const DASH = "—";
export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
export const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];

export function isTerminal(job) {
  return TERMINAL.has(job?.status);
}

export function parseTime(iso) {
  if (!iso) return null;
  // The API writes UTC; a timestamp without a zone is UTC too, not local time.
  const s = /[zZ]|[+-]\d\d:?\d\d$/.test(iso) ? iso : `${iso}Z`;
  const t = Date.parse(s);
  return Number.isNaN(t) ? null : t;
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return DASH;
  const s = Math.max(0, seconds);
  if (s < 1) return `${(s * 1000).toFixed(0)} ms`;
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 60) return `${Math.round(s)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s - m * 60)} s`;
  const hrs = Math.floor(m / 60);
  return `${hrs} h ${m - hrs * 60} min`;
}

export function fmtRelative(iso, now = Date.now()) {
  const t = parseTime(iso);
  if (t === null) return DASH;
  const s = Math.round((now - t) / 1000);
  if (s < 5) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(t).toLocaleDateString();
}

export function fmtTime(iso) {
  const t = parseTime(iso);
  return t === null ? DASH : new Date(t).toLocaleString();
}

export function fmtClock(iso) {
  const t = parseTime(iso);
  return t === null ? DASH : new Date(t).toLocaleTimeString();
}

/** Seconds the job has run: until it finished, or until now while it runs; null if not started. */
export function elapsedSeconds(job, now = Date.now()) {
  const start = parseTime(job?.started_at);
  if (start === null) return null;
  const end = parseTime(job.finished_at) ?? (isTerminal(job) ? parseTime(job.updated_at) : null) ?? now;
  return Math.max(0, (end - start) / 1000);
}

export function fmtBytes(n) {
  if (n === null || n === undefined || !Number.isFinite(Number(n))) return DASH;
  let v = Number(n);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

export function fmtPct(x, digits = 1) {
  if (x === null || x === undefined || !Number.isFinite(Number(x))) return DASH;
  return `${(Number(x) * 100).toFixed(digits)}%`;
}

export function fmtNum(x, digits = 2) {
  if (x === null || x === undefined || !Number.isFinite(Number(x))) return DASH;
  const v = Number(x);
  if (Math.abs(v) >= 1e5) return v.toExponential(2);
  return v.toFixed(digits);
}

/** "×1.23": how many times `base` the `value` is (a sparse perplexity against the dense one). */
export function fmtRatio(value, base) {
  const v = Number(value);
  const b = Number(base);
  if (value === null || value === undefined || base === null || base === undefined) return DASH;
  if (!Number.isFinite(v) || !Number.isFinite(b) || !v || !b) return DASH;
  return `×${(v / b).toFixed(2)}`;
}

/** "2:4" or "50%" for a sparsity target given as the API's string or number. */
export function fmtSparsity(value) {
  if (value === null || value === undefined || value === "") return DASH;
  if (typeof value === "number") return fmtPct(value, value * 100 === Math.round(value * 100) ? 0 : 1);
  return String(value);
}

/** The target as a fraction of zeros: 0.5 for "2:4", the number itself for a ratio. */
export function sparsityFraction(value) {
  if (typeof value === "number") return value;
  const m = /^\s*(\d+)\s*:\s*(\d+)\s*$/.exec(String(value ?? ""));
  if (m) return 1 - Number(m[1]) / Number(m[2]);
  const v = Number(value);
  return Number.isFinite(v) ? v : null;
}

/** Whether a spec's method turns Sparsity Induction on: `induction: true` or `{enabled: true}`. */
export function inductionOn(method) {
  return method?.induction === true || method?.induction?.enabled === true;
}

/** "wanda · owl · SI"; a preset other than the default is named after the pruner. */
export function fmtMethod(method) {
  if (!method) return DASH;
  const parts = [method.pruner || "wanda"];
  if (method.preset && method.preset !== "default") parts.push(method.preset);
  if (method.allocation && method.allocation !== "uniform") parts.push(method.allocation);
  if (inductionOn(method)) parts.push("SI");
  return parts.join(" · ");
}

/** A model as shown in tables: a local path by its folder name (the full path is in the title). */
export function fmtModel(model) {
  if (!model) return DASH;
  const s = String(model);
  if (!s.includes("/") || /^[^/]+\/[^/]+$/.test(s)) return s; // an alias or a hub id "owner/name"
  const parts = s.split("/").filter(Boolean);
  return parts.length ? `…/${parts[parts.length - 1]}` : s;
}

export function shortId(id) {
  if (!id) return DASH;
  const s = String(id);
  return s.length > 14 ? `${s.slice(0, 12)}…` : s;
}

/** Stage and layer as shown under a progress bar: "prune · layer 3 of 30". */
export function fmtStage(job) {
  if (!job) return "";
  if (job.status === "queued") return "waiting for a worker";
  if (job.status === "succeeded") return "done";
  if (job.status === "cancelled")
    return job.stage ? `cancelled during ${humanStage(job.stage)}` : "cancelled";
  if (job.status === "failed") return job.stage ? `failed during ${humanStage(job.stage)}` : "failed";
  const parts = [];
  if (job.cancel_requested) parts.push("cancelling");
  if (job.stage) parts.push(humanStage(job.stage));
  if (job.layer !== null && job.layer !== undefined && job.layers)
    parts.push(`layer ${job.layer} of ${job.layers}`);
  return parts.join(" · ") || "starting";
}

export function humanStage(stage) {
  return String(stage || "").replaceAll("_", " ");
}

export function fmtEta(job) {
  if (!job || isTerminal(job)) return DASH;
  if (job.eta_seconds === null || job.eta_seconds === undefined)
    return job.status === "running" ? "estimating…" : DASH;
  return fmtDuration(job.eta_seconds);
}
