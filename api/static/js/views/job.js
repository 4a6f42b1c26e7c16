// One job: live progress and event timeline while it runs; results, charts and downloads when
// it has succeeded; its error when it failed. The sections live in ../job/*.js; this module
// lays them out, polls the job and decides when each section appears.

import { api } from "../api.js";
import { clear, factList, h, patch, progressBar, statusBadge } from "../dom.js";
import { fmtPct, fmtStage, isTerminal } from "../format.js";
import { loadArtifacts } from "../job/artifacts.js";
import { renderResults } from "../job/results.js";
import { progressFacts, progressFraction, summaryFacts } from "../job/summary.js";
import { timeline } from "../job/timeline.js";
import { poller } from "../poll.js";

function card(label, attrs = {}, ...children) {
  return h("section", { class: "card", "aria-labelledby": label, ...attrs }, ...children);
}

function notFound(root, id) {
  clear(root).append(
    h(
      "section",
      { class: "view" },
      h("h1", {}, "Job not found"),
      h("p", {}, `There is no job ${id} in your team.`),
      h("p", {}, h("a", { href: "#/jobs" }, "← All jobs")),
    ),
  );
}

export function mount(root, ctx) {
  const id = ctx.id;
  const path = `/v1/jobs/${encodeURIComponent(id)}`;
  let job = null;
  let resultsShown = false;
  let chartInstances = [];

  const badge = h("span", { class: "status-slot", "aria-live": "polite" });
  const actions = h("div", { class: "view-actions" });
  const summary = card("summary-title");
  const progress = card("progress-title");
  const errorCard = h("section", { class: "card card-error", role: "alert", hidden: true });
  const results = h("div", { class: "results", hidden: true });
  const artifacts = card("artifacts-title", { hidden: true });
  const events = timeline(id);
  const specPre = h("pre", { class: "code", tabindex: "0" });

  root.append(
    h(
      "section",
      { class: "view", "aria-labelledby": "job-heading" },
      h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "← All jobs")),
      h(
        "div",
        { class: "view-head" },
        h(
          "div",
          { class: "title-row", id: "job-heading" },
          h(
            "h1",
            { class: "job-title" },
            h("span", { class: "muted" }, "Job "),
            h("span", { class: "mono" }, id),
          ),
          badge,
        ),
        actions,
      ),
      errorCard,
      h("div", { class: "two-col top" }, progress, summary),
      results,
      artifacts,
      h(
        "div",
        { class: "two-col" },
        card("events-title", {}, h("h2", { id: "events-title" }, "Events"), events.el),
        card(
          "spec-title",
          {},
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
      job = await api(`${path}/cancel`, { method: "POST" });
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

  function renderProgress() {
    const fraction = progressFraction(job);
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
      factList(progressFacts(job)),
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
    patch(summary, h("h2", { id: "summary-title" }, "Summary"), factList(summaryFacts(job)));
    renderProgress();
    renderError();
    const spec = JSON.stringify(job.spec ?? {}, null, 2);
    if (specPre.textContent !== spec) specPre.textContent = spec;
    // A succeeded job's results and files do not change: each is drawn once.
    if (job.status === "succeeded" && !resultsShown && job.results) {
      resultsShown = true;
      chartInstances = renderResults(results, job);
    }
    if (job.status === "succeeded" && artifacts.hidden) loadArtifacts(artifacts, id);
  }

  async function tick(signal) {
    job = await api(path, { signal });
    await events.refresh(signal);
    render();
    // A finished job does not change again: stop polling (one last events fetch was just made).
    return !isTerminal(job);
  }

  // Elapsed time ticks every second even between polls.
  const clock = setInterval(() => job && !isTerminal(job) && renderProgress(), 1000);
  const poll = poller(tick, 1000, {
    onError: (e) => {
      if (e && e.status === 404) {
        poll.stop();
        notFound(root, id);
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
