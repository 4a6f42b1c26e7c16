// The job list's columns in table.js's column shape. The list patches its rows in place on every
// poll (so focus and the compare checkboxes survive), so it reads cells from these columns
// rather than rebuilding the table with table.js.

import { h, progressBar, statusBadge } from "../dom.js";
import {
  DASH,
  elapsedSeconds,
  fmtDuration,
  fmtEta,
  fmtMethod,
  fmtModel,
  fmtRelative,
  fmtSparsity,
  fmtStage,
  fmtTime,
  shortId,
} from "../format.js";

/** The columns at time `now` (relative times and elapsed time are read against it). */
export function jobColumns(now = Date.now()) {
  const spec = (job) => job.spec || {};
  return [
    {
      label: "Job",
      cell: (job) =>
        h(
          "a",
          { href: `#/jobs/${encodeURIComponent(job.id)}`, class: "mono", title: job.id },
          shortId(job.id),
        ),
    },
    { label: "Status", cell: (job) => statusBadge(job.status) },
    {
      label: "Model",
      cell: (job) => h("span", { class: "model", title: spec(job).model || "" }, fmtModel(spec(job).model)),
    },
    { label: "Sparsity", cell: (job) => fmtSparsity(spec(job).sparsity) },
    { label: "Method", cell: (job) => fmtMethod(spec(job).method) },
    {
      label: "Progress",
      cell: (job) =>
        h(
          "div",
          { class: "progress-cell" },
          progressBar(job.status === "succeeded" ? 1 : (job.progress ?? 0), {
            label: `Progress of ${job.id}`,
            status: job.status,
          }),
          h("span", { class: "progress-caption" }, fmtStage(job)),
        ),
    },
    { label: "ETA", cell: (job) => fmtEta(job) },
    { label: "Submitted by", cell: (job) => job.submitted_by || DASH },
    {
      label: "Created",
      cell: (job) =>
        h(
          "time",
          { datetime: job.created_at || "", title: fmtTime(job.created_at) },
          fmtRelative(job.created_at, now),
        ),
    },
    { label: "Elapsed", cell: (job) => fmtDuration(elapsedSeconds(job, now)) },
  ];
}
