// One job: live progress and event timeline while it runs; results, charts and downloads when
// it has succeeded; its error when it failed.

import { api, artifactPath, listOf, sameOrigin } from "../api.js";
import * as charts from "../charts.js";
import { clear, definitionList, h, patch, progressBar, statusBadge } from "../dom.js";
import {
  DASH,
  elapsedSeconds,
  fmtBytes,
  fmtClock,
  fmtDuration,
  fmtEta,
  fmtMethod,
  fmtNum,
  fmtPct,
  fmtSparsity,
  fmtStage,
  fmtTime,
  humanStage,
  isTerminal,
  sparsityFraction,
} from "../format.js";
import { poller } from "../poll.js";

/** Per-layer rows of a report, whatever their exact field names turn out to be. */
export function layerRows(results) {
  const layers = Array.isArray(results?.layers) ? results.layers : [];
  return layers.map((l, i) => ({
    label: l.name ?? (l.index !== undefined ? `${l.index}` : `${i}`),
    target: num(l.target ?? l.target_sparsity),
    sparsity: num(l.sparsity ?? l.achieved ?? l.achieved_sparsity),
    relError: num(l.rel_error ?? l.relative_error ?? l.reconstruction_error),
    // "dense model": the layer's output against the dense model's (docs/pruners.md,
    // "Linears in turn"); absent: against the dense layer on the same inputs.
    errorVs: l.error_vs ?? null,
    losses: Array.isArray(l.induction?.losses) ? l.induction.losses.map(Number) : null,
    // induction's recovery scales (docs/induction.md, "Recovery"): held-out loss of the layer as
    // the pruner left it and as folded
    recovery: l.recovery
      ? { pruned: num(l.recovery.identity_loss), recovered: num(l.recovery.final_loss) }
      : null,
  }));
}

/**
 * Start a browser download of `url`. A same-origin link gets `filename` from the download
 * attribute; another origin's (presigned storage) names the file by its Content-Disposition.
 */
function followLink(url, filename) {
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  a.rel = "noopener";
  a.hidden = true;
  document.body.append(a);
  a.click();
  a.remove();
}

function num(v) {
  return v === null || v === undefined || !Number.isFinite(Number(v)) ? null : Number(v);
}

/** {source: {dense, sparse}} from results.perplexity, tolerant of a flat {dense: 12.3, sparse: 18}. */
export function perplexityRows(results) {
  const p = results?.perplexity || {};
  const dense = p.dense;
  const sparse = p.sparse;
  if (typeof dense === "number" || typeof sparse === "number")
    return [{ source: "", dense: num(dense), sparse: num(sparse) }];
  const sources = new Set([...Object.keys(dense || {}), ...Object.keys(sparse || {})]);
  return [...sources].map((source) => ({
    source,
    dense: num(dense?.[source]),
    sparse: num(sparse?.[source]),
  }));
}

export function mount(root, ctx) {
  const id = ctx.id;
  let job = null;
  let lastEventId = null;
  const eventIds = new Set();
  let resultsShown = false;
  const chartInstances = [];

  const title = h(
    "h1",
    { class: "job-title" },
    h("span", { class: "muted" }, "Job "),
    h("span", { class: "mono" }, id),
  );
  const badge = h("span", { class: "status-slot", "aria-live": "polite" });
  const actions = h("div", { class: "view-actions" });
  const summary = h("section", { class: "card", "aria-labelledby": "summary-title" });
  const progress = h("section", { class: "card", "aria-labelledby": "progress-title" });
  const errorCard = h("section", { class: "card card-error", role: "alert", hidden: true });
  const results = h("div", { class: "results", hidden: true });
  const artifacts = h("section", { class: "card", "aria-labelledby": "artifacts-title", hidden: true });
  const timeline = h("ol", { class: "timeline", "aria-live": "polite", "aria-relevant": "additions" });
  const specPre = h("pre", { class: "code", tabindex: "0" });

  root.append(
    h(
      "section",
      { class: "view", "aria-labelledby": "job-heading" },
      h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "← All jobs")),
      h(
        "div",
        { class: "view-head" },
        h("div", { class: "title-row", id: "job-heading" }, title, badge),
        actions,
      ),
      errorCard,
      h("div", { class: "two-col top" }, progress, summary),
      results,
      artifacts,
      h(
        "div",
        { class: "two-col" },
        h(
          "section",
          { class: "card", "aria-labelledby": "events-title" },
          h("h2", { id: "events-title" }, "Events"),
          timeline,
        ),
        h(
          "section",
          { class: "card", "aria-labelledby": "spec-title" },
          h(
            "div",
            { class: "card-head" },
            h("h2", { id: "spec-title" }, "Spec"),
            h("button", { type: "button", class: "btn btn-small", onclick: copySpec }, "Copy JSON"),
          ),
          specPre,
        ),
      ),
    ),
  );
  document.title = `${id} · Spruce`;

  function copySpec() {
    navigator.clipboard?.writeText(specPre.textContent).then(
      () => ctx.notify("Spec copied to the clipboard."),
      () => ctx.notify("Copying needs clipboard permission; select the text instead.", "error"),
    );
  }

  async function cancel(button) {
    button.disabled = true;
    button.textContent = "Cancelling…";
    try {
      job = await api(`/v1/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" });
      render();
      poll.refresh();
    } catch (e) {
      ctx.notify(`Could not cancel: ${e.message}`, "error");
      button.disabled = false;
      button.textContent = "Cancel job";
    }
  }

  function renderActions() {
    const items = [];
    if (job && !isTerminal(job) && !job.cancel_requested) {
      const b = h(
        "button",
        { type: "button", class: "btn btn-danger", "data-action": "cancel" },
        "Cancel job",
      );
      b.addEventListener("click", () => cancel(b));
      items.push(b);
    }
    if (job?.status === "succeeded")
      items.push(h("a", { class: "btn", href: `#/compare?ids=${encodeURIComponent(id)}` }, "Compare…"));
    items.push(
      h("a", { class: "btn", href: `#/new?from=${encodeURIComponent(id)}` }, "Run again with changes"),
    );
    // Rebuild only when the set of actions changes, so a focused button is not replaced.
    const want = items.map((i) => i.textContent).join("|");
    if (actions.dataset.want !== want) {
      clear(actions).append(...items);
      actions.dataset.want = want;
    }
  }

  function renderSummary() {
    const s = job.spec || {};
    const c = s.calibration || {};
    const ev = s.evaluation || {};
    const ind = s.method?.induction;
    patch(
      summary,
      h("h2", { id: "summary-title" }, "Summary"),
      definitionList([
        ["Model", h("span", { class: "mono wrap" }, s.model || DASH)],
        ["Sparsity target", fmtSparsity(s.sparsity)],
        ["Method", fmtMethod(s.method)],
        // Fields left out of a body take the API's defaults (core/spec.py), shown as such.
        ind?.enabled
          ? [
              "Induction",
              `${ind.epochs ?? 1} epochs · lr ${ind.lr ?? 0.05} · reg ${ind.reg ?? 0.0001} · ${ind.mask ?? "ste"}`,
            ]
          : null,
        [
          "Calibration",
          `${c.source ?? "pydoc"} · ${c.samples ?? 32} × ${c.seq_len ?? 512} tokens · seed ${c.seed ?? 0}`,
        ],
        [
          "Evaluation",
          `${[].concat(ev.sources ?? ["pydoc"]).join(", ")} · up to ${ev.max_windows ?? 40} windows × ${ev.seq_len ?? 512}`,
        ],
        ["Submitted by", job.submitted_by || DASH],
        ["Team", job.team?.name ?? job.team ?? DASH],
        job.cancel_requested && !isTerminal(job)
          ? ["Cancel", "requested; the worker stops between layers"]
          : null,
        ["Created", fmtTime(job.created_at)],
        ["Started", fmtTime(job.started_at)],
        ["Finished", fmtTime(job.finished_at)],
        job.attempts > 1 ? ["Attempts", String(job.attempts)] : null,
        // A worker was lost and the job went on from its per-layer checkpoint (docs/service.md).
        job.resumes > 0
          ? [
              "Resumed",
              `${job.resumes}× from a checkpoint` +
                (job.results?.resume ? `, last from layer ${job.results.resume.from_layer + 1}` : ""),
            ]
          : null,
      ]),
    );
  }

  function renderProgress() {
    const fraction = job.status === "succeeded" ? 1 : (job.progress ?? 0);
    patch(
      progress,
      h("h2", { id: "progress-title" }, "Progress"),
      progressBar(fraction, { label: "Job progress", status: job.status }),
      h(
        "p",
        { class: "progress-line" },
        h("strong", { class: "stage", "data-testid": "stage" }, fmtStage(job)),
        h("span", { class: "muted" }, ` · ${fmtPct(fraction, 0)}`),
      ),
      job.message && !isTerminal(job) ? h("p", { class: "help" }, job.message) : null,
      definitionList([
        ["Elapsed", fmtDuration(elapsedSeconds(job))],
        ["ETA", fmtEta(job)],
        job.layers ? ["Layer", `${job.layer ?? 0} of ${job.layers}`] : null,
        ["Updated", fmtClock(job.updated_at)],
      ]),
    );
  }

  function renderError() {
    const failed = job.status === "failed";
    errorCard.hidden = !failed;
    if (!failed) return;
    const e = job.error || {};
    patch(
      errorCard,
      h("h2", {}, "This job failed"),
      h("p", { class: "error-message" }, e.message || "The worker reported no message."),
      e.code ? h("p", { class: "muted" }, "Error code: ", h("code", {}, e.code)) : null,
    );
  }

  function render() {
    if (!job) return;
    patch(badge, statusBadge(job.status));
    renderActions();
    renderSummary();
    renderProgress();
    renderError();
    const spec = JSON.stringify(job.spec ?? {}, null, 2);
    if (specPre.textContent !== spec) specPre.textContent = spec;
    if (job.status === "succeeded" && !resultsShown && job.results) {
      resultsShown = true;
      renderResults(job.results);
    }
    if (isTerminal(job) && artifacts.hidden && job.status === "succeeded") loadArtifacts();
  }

  // --- results -------------------------------------------------------------------------------
  function statCard(titleText, body) {
    return h("section", { class: "card stat-card" }, h("h2", {}, titleText), body);
  }

  function renderResults(r) {
    const target = sparsityFraction(job.spec?.sparsity);
    const ppl = perplexityRows(r);
    const sp = r.sparsity || {};
    const sizes = r.sizes || {};
    const timings = r.timings || {};
    const layers = layerRows(r);

    const pplTable = h(
      "table",
      { class: "table compact", "data-testid": "perplexity" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { scope: "col" }, "Text"),
          h("th", { scope: "col", class: "num" }, "Dense"),
          h("th", { scope: "col", class: "num" }, "Sparse"),
          h("th", { scope: "col", class: "num" }, "Change"),
        ),
      ),
      h(
        "tbody",
        {},
        ppl.map((row) =>
          h(
            "tr",
            {},
            h("th", { scope: "row" }, row.source || "all"),
            h("td", { class: "num" }, fmtNum(row.dense)),
            h("td", { class: "num" }, fmtNum(row.sparse)),
            h(
              "td",
              { class: "num" },
              row.dense && row.sparse ? `×${(row.sparse / row.dense).toFixed(2)}` : DASH,
            ),
          ),
        ),
      ),
    );

    const nmOk = sp.nm_ok ?? sp.nm_valid;
    const sparsityList = definitionList([
      ["Target", fmtSparsity(job.spec?.sparsity)],
      ["Mean", h("strong", {}, fmtPct(sp.mean, 2))],
      sp.overall === undefined ? null : ["Overall (by weight)", fmtPct(sp.overall, 2)],
      ["Min", fmtPct(sp.min, 2)],
      ["Max", fmtPct(sp.max, 2)],
      nmOk === undefined || nmOk === null ? null : ["N:M pattern", nmOk ? "every group obeys" : "violated"],
    ]);

    const dense = sizes.dense_bytes;
    const compact = sizes.compact_bytes;
    const sizeList = definitionList([
      ["Dense", fmtBytes(dense)],
      ["HF folder", h("span", { title: "Hugging Face folder, zeros in place" }, fmtBytes(sizes.hf_bytes))],
      ["Compact", h("strong", { title: "compressed-tensors sparse bitmask" }, fmtBytes(compact))],
      dense && compact ? ["Compact / dense", fmtPct(compact / dense, 1)] : null,
    ]);

    // "total" is the wall time of the whole run (the stages do not add up to it exactly).
    const stageEntries = Object.entries(timings).filter(
      ([k, v]) => k !== "total" && Number.isFinite(Number(v)),
    );
    const summed = stageEntries.reduce((a, [, v]) => a + Number(v), 0);
    const total = Number.isFinite(Number(timings.total)) ? Number(timings.total) : summed;
    const timingList = h(
      "ul",
      { class: "bars", "data-testid": "timings" },
      stageEntries.map(([stage, secs]) => {
        const fill = h("span", { class: "bar-fill" });
        fill.style.width = `${total ? Math.min(100, (100 * Number(secs)) / total) : 0}%`;
        return h(
          "li",
          {},
          h("span", { class: "bar-label" }, humanStage(stage)),
          h("span", { class: "bar-track", "aria-hidden": "true" }, fill),
          h("span", { class: "bar-value" }, fmtDuration(Number(secs))),
        );
      }),
      total
        ? h(
            "li",
            { class: "bars-total" },
            h("span", { class: "bar-label" }, "total"),
            h("span"),
            h("span", { class: "bar-value" }, fmtDuration(total)),
          )
        : null,
    );

    const sparsityCanvas = h("canvas", {
      id: "chart-sparsity",
      role: "img",
      "aria-label": "Achieved sparsity per layer",
    });
    const vsModel = layers.some((l) => l.errorVs === "dense model");
    const errorTitle = vsModel ? "Error against the dense model per layer" : "Reconstruction error per layer";
    const errorCanvas = h("canvas", {
      id: "chart-error",
      role: "img",
      "aria-label": vsModel
        ? "Relative error of each layer's output against the dense model's"
        : "Relative reconstruction error per layer",
    });
    const withLosses = layers.filter((l) => l.losses && l.losses.length);
    const lossCanvas = withLosses.length
      ? h("canvas", {
          id: "chart-induction",
          role: "img",
          "aria-label": "Sparsity Induction loss per step, one line per layer",
        })
      : null;
    const withRecovery = layers.filter((l) => l.recovery);
    const recoveryCanvas = withRecovery.length
      ? h("canvas", {
          id: "chart-recovery",
          role: "img",
          "aria-label": "Held-out loss of each layer as pruned and after the recovery scales",
        })
      : null;

    clear(results).append(
      h("h2", { class: "section-title" }, "Results"),
      h(
        "div",
        { class: "stat-grid" },
        statCard(
          "Perplexity",
          ppl.length ? pplTable : h("p", { class: "muted" }, "No perplexity in the report."),
        ),
        statCard("Achieved sparsity", sparsityList),
        statCard("Size", sizeList),
        statCard(
          "Time per stage",
          stageEntries.length ? timingList : h("p", { class: "muted" }, "No timings in the report."),
        ),
      ),
      layers.length
        ? h(
            "div",
            { class: "two-col" },
            h(
              "section",
              { class: "card" },
              h("h2", {}, "Sparsity per layer"),
              h("div", { class: "chart" }, sparsityCanvas),
            ),
            h(
              "section",
              { class: "card" },
              h("h2", {}, errorTitle),
              h("div", { class: "chart" }, errorCanvas),
            ),
          )
        : h("p", { class: "muted" }, "The report has no per-layer figures."),
      lossCanvas
        ? h(
            "section",
            { class: "card" },
            h("h2", {}, "Sparsity Induction loss"),
            h("div", { class: "chart chart-wide" }, lossCanvas),
          )
        : null,
      recoveryCanvas
        ? h(
            "section",
            { class: "card" },
            h("h2", {}, "Recovery scales: held-out loss per layer"),
            h("div", { class: "chart chart-wide" }, recoveryCanvas),
          )
        : null,
    );
    results.hidden = false;

    if (!layers.length) return;
    if (!charts.available()) {
      results.append(h("p", { class: "muted" }, "Charts are unavailable: the chart library did not load."));
      return;
    }
    const labels = layers.map((l) => l.label);
    const targets = layers.map((l) => l.target ?? target);
    chartInstances.push(
      charts.draw(sparsityCanvas, {
        kind: "bar",
        labels,
        xTitle: "layer",
        yTitle: "zeros",
        yPercent: true,
        datasets: [
          { label: "achieved", data: layers.map((l) => l.sparsity) },
          ...(targets.some((t) => t !== null)
            ? [
                {
                  label: "target",
                  type: "line",
                  data: targets,
                  color: "#94a3b8",
                  pointRadius: 0,
                  borderDash: [6, 4],
                },
              ]
            : []),
        ],
      }),
    );
    const errs = layers.map((l) => l.relError);
    chartInstances.push(
      charts.draw(errorCanvas, {
        kind: "bar",
        labels,
        xTitle: "layer",
        yTitle: vsModel
          ? "relative error vs the dense model ‖Y − Ŷ‖ / ‖Y‖"
          : "relative error ‖WX − ŴX‖ / ‖WX‖",
        datasets: [{ label: "relative error", data: errs, color: "#d97706" }],
      }),
    );
    if (lossCanvas) {
      const steps = Math.max(...withLosses.map((l) => l.losses.length));
      chartInstances.push(
        charts.draw(lossCanvas, {
          kind: "line",
          labels: Array.from({ length: steps }, (_, i) => i + 1),
          xTitle: "step",
          yTitle: "loss",
          yLog: charts.wantsLog(withLosses.flatMap((l) => l.losses)),
          datasets: withLosses.map((l) => ({ label: `layer ${l.label}`, data: l.losses, fill: false })),
        }),
      );
    }
    if (recoveryCanvas) {
      const values = withRecovery.flatMap((l) => [l.recovery.pruned, l.recovery.recovered]);
      chartInstances.push(
        charts.draw(recoveryCanvas, {
          kind: "bar",
          labels: withRecovery.map((l) => l.label),
          xTitle: "layer",
          yTitle: "relative MSE on held-out sequences",
          yLog: charts.wantsLog(values),
          datasets: [
            { label: "as pruned", data: withRecovery.map((l) => l.recovery.pruned), color: "#94a3b8" },
            { label: "recovered", data: withRecovery.map((l) => l.recovery.recovered), color: "#16a34a" },
          ],
        }),
      );
    }
  }

  // --- artifacts -------------------------------------------------------------------------------
  async function loadArtifacts() {
    artifacts.hidden = false;
    clear(artifacts).append(
      h("h2", { id: "artifacts-title" }, "Downloads"),
      h("p", { class: "muted" }, "Loading…"),
    );
    let list;
    try {
      list = listOf(await api(`/v1/jobs/${encodeURIComponent(id)}/artifacts`));
    } catch (e) {
      clear(artifacts).append(
        h("h2", { id: "artifacts-title" }, "Downloads"),
        h("p", { class: "field-error" }, e.message),
      );
      return;
    }
    const status = h("p", { class: "help", role: "status", "aria-live": "polite" });
    const rows = list.map((a) => {
      const name = a.name ?? a.path;
      const filename = String(name).replaceAll("/", "_");
      const button = h(
        "button",
        { type: "button", class: "btn btn-small", "data-artifact": name, "aria-label": `Download ${name}` },
        "Download",
      );
      button.addEventListener("click", async () => {
        button.disabled = true;
        status.textContent = `Downloading ${name}…`;
        try {
          // Ask for a short-lived link that needs no API key (a presigned object-storage URL, or a
          // signed URL of this API) and let the browser download it: the file streams to disk
          // instead of being held in memory as a blob, whatever its size.
          const link = await api(`${artifactPath(id, name)}?redirect=false`);
          followLink(link.url, `${id}-${filename}`);
          status.textContent = sameOrigin(link.url)
            ? `Downloading ${name} (${fmtBytes(a.size ?? a.bytes)}).`
            : `Downloading ${name} from object storage (${fmtBytes(a.size ?? a.bytes)}).`;
        } catch (e) {
          status.textContent = `Download of ${name} failed: ${e.message}`;
        } finally {
          button.disabled = false;
        }
      });
      return h(
        "tr",
        {},
        h("th", { scope: "row", class: "mono" }, name),
        h("td", { class: "num" }, fmtBytes(a.size ?? a.bytes)),
        h(
          "td",
          { class: "mono muted", title: a.sha256 || "" },
          a.sha256 ? `${a.sha256.slice(0, 12)}…` : DASH,
        ),
        h("td", {}, button),
      );
    });
    clear(artifacts).append(
      h("h2", { id: "artifacts-title" }, "Downloads"),
      list.length
        ? h(
            "div",
            { class: "table-wrap" },
            h(
              "table",
              { class: "table compact" },
              h(
                "thead",
                {},
                h(
                  "tr",
                  {},
                  h("th", { scope: "col" }, "File"),
                  h("th", { scope: "col", class: "num" }, "Size"),
                  h("th", { scope: "col" }, "SHA-256"),
                  h("th", { scope: "col" }, h("span", { class: "sr-only" }, "Action")),
                ),
              ),
              h("tbody", {}, rows),
            ),
          )
        : h("p", { class: "muted" }, "This job has no files."),
      status,
    );
  }

  // --- events ----------------------------------------------------------------------------------
  function addEvents(events) {
    for (const e of events) {
      if (e.id !== undefined && eventIds.has(e.id)) continue;
      if (e.id !== undefined) eventIds.add(e.id);
      lastEventId = e.id ?? lastEventId;
      // A status event names the state it moved to (data.to); show that rather than "status".
      const kind = String(e.type === "status" && e.data?.to ? e.data.to : e.type || "event");
      const failed = /fail|error/.test(kind);
      timeline.append(
        h(
          "li",
          { class: `event ${failed ? "event-error" : ""}`, "data-type": kind },
          h("time", { datetime: e.created_at || "", title: fmtTime(e.created_at) }, fmtClock(e.created_at)),
          h("span", { class: "event-type" }, humanStage(kind)),
          e.stage ? h("span", { class: "event-stage" }, humanStage(e.stage)) : null,
          // "stage load" says nothing the stage column does not.
          h(
            "span",
            { class: "event-message" },
            e.message && e.message !== `stage ${e.stage}` ? e.message : "",
          ),
        ),
      );
    }
  }

  async function fetchEvents(signal) {
    // Page through with the cursor until the API says there is no more (bounded per poll).
    for (let page = 0; page < 20; page += 1) {
      const q =
        lastEventId !== null && lastEventId !== undefined ? `?after=${encodeURIComponent(lastEventId)}` : "";
      const body = await api(`/v1/jobs/${encodeURIComponent(id)}/events${q}`, { signal });
      const events = listOf(body);
      addEvents(events);
      if (!body?.has_more || !events.length) return;
    }
  }

  async function tick(signal) {
    job = await api(`/v1/jobs/${encodeURIComponent(id)}`, { signal });
    await fetchEvents(signal).catch((e) => {
      if (e.name === "AbortError") throw e;
    });
    render();
    if (!timeline.children.length)
      timeline.append(h("li", { class: "event muted placeholder" }, "No events yet."));
    else timeline.querySelector(".placeholder")?.remove();
    // A finished job does not change again: stop polling (one last events fetch was just made).
    return !isTerminal(job);
  }

  // Elapsed time ticks every second even between polls.
  const clock = setInterval(() => job && !isTerminal(job) && renderProgress(), 1000);
  const poll = poller(tick, 1000, {
    onError: (e) => {
      if (e && e.status === 404) {
        poll.stop();
        clear(root).append(
          h(
            "section",
            { class: "view" },
            h("h1", {}, "Job not found"),
            h("p", {}, `There is no job ${id} in your team.`),
            h("p", {}, h("a", { href: "#/jobs" }, "← All jobs")),
          ),
        );
        return;
      }
      ctx.notify(e ? `Could not refresh the job: ${e.message}` : null, "error");
    },
  });
  return () => {
    poll.stop();
    clearInterval(clock);
    for (const c of chartInstances) c?.destroy();
  };
}
