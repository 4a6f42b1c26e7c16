// The submit form: builds the POST /v1/jobs body and shows the API's validation messages next
// to the field they name (error.param is a dotted path such as "calibration.samples").
//
// The API is the one validator: the form does not check ranges itself (novalidate), so the
// messages a user sees are the same ones a script using the API gets.

import { ApiError, api, listOf } from "../api.js";
import { h } from "../dom.js";

const DEFAULT_MODELS = ["smollm2-135m"];
const NAMED_SETS = [
  ["pydoc", "pydoc (Python docs, offline)"],
  ["wikitext2", "WikiText-2"],
  ["c4", "C4"],
];

function fieldId(param) {
  return `f-${param.replaceAll(".", "-")}`;
}

/** Find the registered param that best matches an error's param: itself or its closest parent. */
export function matchParam(param, known) {
  if (!param) return null;
  let p = String(param);
  for (;;) {
    if (known.has(p)) return p;
    // "evaluation.sources[1]" and "evaluation.sources.1" both name the sources field.
    const indexed = /^(.*?)(\[\d+\]|\.\d+)$/.exec(p);
    if (indexed) {
      p = indexed[1];
      continue;
    }
    const cut = p.lastIndexOf(".");
    if (cut < 0) return null;
    p = p.slice(0, cut);
  }
}

export function mount(root, ctx) {
  const fields = new Map(); // param -> {control, error, container}
  const formError = h("div", { class: "form-error", role: "alert", hidden: true });

  /** A labelled field whose error message is shown under it. */
  function field(param, label, control, { help = null, cls = "" } = {}) {
    const id = fieldId(param);
    const errorEl = h("p", { class: "field-error", id: `${id}-error` });
    const helpEl = help ? h("p", { class: "help", id: `${id}-help` }, help) : null;
    if (!control.id) control.id = id;
    control.dataset.param = param;
    control.setAttribute(
      "aria-describedby",
      [helpEl && `${id}-help`, `${id}-error`].filter(Boolean).join(" "),
    );
    const container = h(
      "div",
      { class: `field ${cls}` },
      h("label", { for: control.id }, label),
      control,
      helpEl,
      errorEl,
    );
    fields.set(param, { control, error: errorEl, container });
    return container;
  }

  /** A group of checkboxes under a legend, with one error slot for the group. */
  function group(param, legend, box) {
    const id = fieldId(param);
    const errorEl = h("p", { class: "field-error", id: `${id}-error` });
    box.dataset.param = param;
    const container = h(
      "fieldset",
      { class: "field field-group", "aria-describedby": `${id}-error` },
      h("legend", {}, legend),
      box,
      errorEl,
    );
    fields.set(param, { control: box, error: errorEl, container });
    return container;
  }

  /** A number input holding the API's default (so the submitted spec is explicit), or empty with the
   *  default as placeholder (induction: the engine's defaults apply when left empty). */
  function numberInput(name, value, { step = "1", min = null, placeholder = value } = {}) {
    return h("input", {
      type: "number",
      name,
      inputmode: step === "1" ? "numeric" : "decimal",
      step,
      min,
      value,
      placeholder,
    });
  }

  // --- model and target -------------------------------------------------------------------
  const modelList = h("datalist", { id: "model-options" });
  const model = h("input", {
    type: "text",
    name: "model",
    list: "model-options",
    required: true,
    autocomplete: "off",
    spellcheck: "false",
    value: DEFAULT_MODELS[0],
  });
  const sparsity = h("input", {
    type: "text",
    name: "sparsity",
    value: "0.5",
    autocomplete: "off",
    spellcheck: "false",
  });
  const presets = h(
    "div",
    { class: "chips", role: "group", "aria-label": "Common sparsity targets" },
    [
      ["50%", "0.5"],
      ["70%", "0.7"],
      ["2:4", "2:4"],
      ["4:8", "4:8"],
    ].map(([text, value]) =>
      h(
        "button",
        {
          type: "button",
          class: "chip",
          onclick: () => {
            sparsity.value = value;
            sparsity.focus();
          },
        },
        text,
      ),
    ),
  );

  // --- method ------------------------------------------------------------------------------
  const pruner = h(
    "select",
    { name: "pruner" },
    h("option", { value: "magnitude" }, "Magnitude"),
    h("option", { value: "wanda", selected: true }, "Wanda"),
    h("option", { value: "sparsegpt" }, "SparseGPT"),
  );
  const allocation = h(
    "select",
    { name: "allocation" },
    h("option", { value: "uniform", selected: true }, "Uniform (same sparsity in every layer)"),
    h("option", { value: "owl" }, "OWL (by outlier ratio)"),
  );
  const induction = h("input", {
    type: "checkbox",
    name: "induction",
    id: fieldId("method.induction.enabled"),
  });
  // Placeholders are the engine's defaults (core/spec.py InductionSpec); an empty field sends
  // nothing, so the API applies them.
  const epochs = numberInput("epochs", "", { min: 0, placeholder: "auto" });
  const lr = numberInput("lr", "", { step: "any", placeholder: "0.05" });
  const reg = numberInput("reg", "", { step: "any", placeholder: "0.0001" });
  const mask = h(
    "select",
    { name: "mask" },
    h("option", { value: "ste", selected: true }, "Straight-through (ste)"),
    h("option", { value: "soft" }, "Soft mask"),
  );
  const targets = h(
    "select",
    { name: "targets" },
    h("option", { value: "auto", selected: true }, "Auto (the dense model's outputs where the scales train)"),
    h("option", { value: "model" }, "The dense model's outputs of each layer"),
    h("option", { value: "layer" }, "The dense layer on the pruned inputs (the paper's)"),
  );
  // After pruning: scales trained with the mask fixed and folded into the sparse weights
  // (docs/induction.md, "Recovery"); 0 turns them off.
  const recoverEpochs = numberInput("recover_epochs", "", { min: 0, placeholder: "auto (1; magnitude 0)" });
  // The recovery's step on each kept weight, relative to its linear's mean weight; 0: scales only.
  const recoverWeightsLr = numberInput("recover_weights_lr", "", { step: "any", min: 0, placeholder: "0.006" });
  // The first calibration sequences induction reads; 0: all (magnitude's default is 1: its
  // budget is 3x a pruning step that reads no data).
  const inductionSamples = numberInput("induction_samples", "", { min: 0, placeholder: "auto (all; magnitude 1)" });
  const inductionSettings = [epochs, lr, reg, mask, targets, recoverEpochs, recoverWeightsLr, inductionSamples];
  function syncInduction() {
    for (const c of inductionSettings) c.disabled = !induction.checked;
    inductionBox.classList.toggle("muted", !induction.checked);
  }
  induction.addEventListener("change", syncInduction);

  // --- calibration -------------------------------------------------------------------------
  const calSource = h(
    "select",
    { name: "calibration-source" },
    NAMED_SETS.map(([value, text]) => h("option", { value }, text)),
  );
  const upload = h("input", {
    type: "file",
    name: "calibration-file",
    accept: ".txt,.jsonl,text/plain,application/jsonl",
  });
  const uploadStatus = h("p", { class: "help", role: "status", "aria-live": "polite" });
  const samples = numberInput("samples", "32", { min: 1 });
  const seqLen = numberInput("seq_len", "512", { min: 8 });
  const seed = numberInput("seed", "0");

  // --- evaluation --------------------------------------------------------------------------
  const evalBox = h("div", { class: "checks", id: fieldId("evaluation.sources"), tabindex: "-1" });
  function addEvalSource(value, text, checked = false) {
    if (evalBox.querySelector(`input[value="${CSS.escape(value)}"]`)) return;
    const id = `eval-${value.replace(/[^a-zA-Z0-9_-]/g, "_")}`;
    evalBox.append(
      h(
        "span",
        { class: "check" },
        h("input", { type: "checkbox", id, name: "evaluation-source", value, checked }),
        h("label", { for: id }, text),
      ),
    );
  }
  for (const [value, text] of NAMED_SETS) addEvalSource(value, text, value === "pydoc");
  const evalSeqLen = numberInput("eval-seq_len", "512", { min: 8 });
  const maxWindows = numberInput("max_windows", "40", { min: 1 });

  function addDataset(ds) {
    const label = `${ds.name || ds.filename || ds.id} (uploaded)`;
    if (!calSource.querySelector(`option[value="${CSS.escape(ds.id)}"]`)) {
      calSource.append(h("option", { value: ds.id }, label));
    }
    addEvalSource(ds.id, label);
  }

  upload.addEventListener("change", async () => {
    const file = upload.files?.[0];
    if (!file) return;
    setError("calibration.source", null);
    uploadStatus.textContent = `Uploading ${file.name}…`;
    const form = new FormData();
    form.append("file", file, file.name);
    try {
      const ds = await api("/v1/datasets", { method: "POST", form });
      addDataset(ds);
      calSource.value = ds.id;
      uploadStatus.textContent = `Uploaded ${file.name} as ${ds.id}; it is selected as the calibration set.`;
    } catch (e) {
      uploadStatus.textContent = "";
      setError("calibration.source", e.message);
    }
  });

  const submit = h("button", { type: "submit", class: "btn btn-primary" }, "Submit job");

  const inductionBox = h(
    "div",
    { class: "subgrid" },
    field("method.induction.epochs", "Epochs", epochs),
    field("method.induction.lr", "Learning rate", lr),
    field("method.induction.reg", "Regulariser weight", reg),
    field("method.induction.mask", "Mask during training", mask),
    field("method.induction.targets", "Train against", targets),
    field("method.induction.recover_epochs", "Recovery epochs", recoverEpochs),
    field("method.induction.recover_weights_lr", "Recovery weight step", recoverWeightsLr),
    field("method.induction.samples", "Induction sequences", inductionSamples),
  );

  const form = h(
    "form",
    { class: "form job-form", novalidate: true, onsubmit: onSubmit, "aria-labelledby": "new-title" },
    formError,
    h(
      "fieldset",
      { class: "card" },
      h("legend", {}, "Model and target"),
      h(
        "div",
        { class: "grid" },
        field("model", "Model", model, {
          help: "A model name the service knows, or a local folder it allows.",
        }),
        field("sparsity", "Sparsity", sparsity, {
          help: "A ratio of zeros such as 0.5, or an N:M pattern such as 2:4.",
        }),
      ),
      presets,
      modelList,
    ),
    h(
      "fieldset",
      { class: "card" },
      h("legend", {}, "Method"),
      h(
        "div",
        { class: "grid" },
        field("method.pruner", "Pruner", pruner),
        field("method.allocation", "Layer allocation", allocation),
      ),
      h(
        "div",
        { class: "field field-inline" },
        induction,
        h("label", { for: induction.id }, "Sparsity Induction (learn scales and shifts before pruning)"),
        h("p", { class: "field-error", id: `${fieldId("method.induction")}-error` }),
      ),
      inductionBox,
    ),
    h(
      "fieldset",
      { class: "card" },
      h("legend", {}, "Calibration"),
      h(
        "div",
        { class: "grid" },
        field("calibration.source", "Calibration text", calSource),
        h(
          "div",
          { class: "field" },
          h("label", { for: "f-upload" }, "…or upload a file (.txt, .jsonl)"),
          Object.assign(upload, { id: "f-upload" }),
          uploadStatus,
        ),
      ),
      h(
        "div",
        { class: "grid grid-3" },
        field("calibration.samples", "Samples", samples),
        field("calibration.seq_len", "Sequence length", seqLen),
        field("calibration.seed", "Seed", seed),
      ),
    ),
    h(
      "fieldset",
      { class: "card" },
      h("legend", {}, "Evaluation"),
      group("evaluation.sources", "Texts to measure perplexity on", evalBox),
      h(
        "div",
        { class: "grid grid-3" },
        field("evaluation.seq_len", "Window length", evalSeqLen),
        field("evaluation.max_windows", "Max windows", maxWindows),
      ),
    ),
    h("div", { class: "actions" }, submit, h("a", { class: "btn btn-ghost", href: "#/jobs" }, "Cancel")),
  );
  // The induction checkbox and the section share the error slot above.
  fields.set("method.induction", {
    control: induction,
    error: form.querySelector(`#${fieldId("method.induction")}-error`),
    container: induction.parentElement,
  });
  fields.set("method.induction.enabled", fields.get("method.induction"));
  // Errors about the whole section land next to the pruner (the section's first field).
  fields.set("method", fields.get("method.pruner"));
  fields.set("calibration", fields.get("calibration.source"));
  fields.set("evaluation", fields.get("evaluation.sources"));

  root.append(
    h(
      "section",
      { class: "view narrow" },
      h("div", { class: "view-head" }, h("h1", { id: "new-title" }, "New job")),
      form,
    ),
  );
  document.title = "New job · Spruce";
  syncInduction();

  // --- errors ------------------------------------------------------------------------------
  function setError(param, message) {
    const f = fields.get(param);
    if (!f) return false;
    f.error.textContent = message || "";
    f.container.classList.toggle("invalid", Boolean(message));
    if (message) f.control.setAttribute("aria-invalid", "true");
    else f.control.removeAttribute("aria-invalid");
    return true;
  }

  function clearErrors() {
    for (const param of fields.keys()) setError(param, null);
    formError.hidden = true;
    formError.textContent = "";
  }

  function showError(e) {
    const target = matchParam(e.param, new Set(fields.keys()));
    // The field already says which input is meant; drop a "param: " prefix from the message.
    const prefix = e.param ? `${e.param}: ` : "";
    const message = prefix && e.message.startsWith(prefix) ? e.message.slice(prefix.length) : e.message;
    if (target && e.status !== 401) {
      setError(target, message);
      const f = fields.get(target);
      f.container.scrollIntoView({ block: "center", behavior: "instant" });
      f.control.focus({ preventScroll: true });
      // A parent field got the message: name the exact field too.
      if (target !== e.param) fields.get(target).error.textContent = `${e.param}: ${message}`;
      return;
    }
    formError.textContent = e.param ? `${e.param}: ${e.message}` : e.message;
    formError.hidden = false;
    formError.scrollIntoView({ block: "center", behavior: "instant" });
  }

  // --- body --------------------------------------------------------------------------------
  /** The value of a number input, or undefined when empty (the API's default applies). */
  function numberValue(input, param) {
    if (input.validity.badInput) throw new ApiError(0, "Enter a number.", { param, code: "client" });
    const raw = input.value.trim();
    return raw === "" ? undefined : Number(raw);
  }

  function sparsityValue() {
    const raw = sparsity.value.trim();
    if (raw !== "" && !raw.includes(":") && Number.isFinite(Number(raw))) return Number(raw);
    return raw;
  }

  function prune(obj) {
    return Object.fromEntries(Object.entries(obj).filter(([, v]) => v !== undefined));
  }

  function buildBody() {
    const inductionBody = induction.checked
      ? prune({
          enabled: true,
          epochs: numberValue(epochs, "method.induction.epochs"),
          lr: numberValue(lr, "method.induction.lr"),
          reg: numberValue(reg, "method.induction.reg"),
          mask: mask.value,
          targets: targets.value,
          recover_epochs: numberValue(recoverEpochs, "method.induction.recover_epochs"),
          recover_weights_lr: numberValue(recoverWeightsLr, "method.induction.recover_weights_lr"),
          samples: numberValue(inductionSamples, "method.induction.samples"),
        })
      : { enabled: false };
    return {
      model: model.value.trim(),
      sparsity: sparsityValue(),
      method: { pruner: pruner.value, allocation: allocation.value, induction: inductionBody },
      calibration: prune({
        source: calSource.value,
        samples: numberValue(samples, "calibration.samples"),
        seq_len: numberValue(seqLen, "calibration.seq_len"),
        seed: numberValue(seed, "calibration.seed"),
      }),
      evaluation: prune({
        sources: [...evalBox.querySelectorAll("input:checked")].map((c) => c.value),
        seq_len: numberValue(evalSeqLen, "evaluation.seq_len"),
        max_windows: numberValue(maxWindows, "evaluation.max_windows"),
      }),
    };
  }

  async function onSubmit(event) {
    event.preventDefault();
    clearErrors();
    let body;
    try {
      body = buildBody();
    } catch (e) {
      showError(e);
      return;
    }
    submit.disabled = true;
    submit.textContent = "Submitting…";
    try {
      const job = await api("/v1/jobs", { method: "POST", json: body });
      ctx.navigate(`#/jobs/${encodeURIComponent(job.id)}`);
    } catch (e) {
      showError(e);
      submit.disabled = false;
      submit.textContent = "Submit job";
    }
  }

  // --- fill from a previous job ("Run again with changes") ------------------------------------
  function fill(spec) {
    if (!spec) return;
    model.value = spec.model ?? "";
    sparsity.value = spec.sparsity ?? "";
    const m = spec.method || {};
    if (m.pruner) pruner.value = m.pruner;
    if (m.allocation) allocation.value = m.allocation;
    const ind = m.induction || {};
    induction.checked = Boolean(ind.enabled);
    epochs.value = ind.epochs ?? "";
    lr.value = ind.lr ?? "";
    reg.value = ind.reg ?? "";
    if (ind.mask) mask.value = ind.mask;
    if (ind.targets) targets.value = ind.targets;
    recoverEpochs.value = ind.recover_epochs >= 0 ? ind.recover_epochs : "";
    recoverWeightsLr.value = ind.recover_weights_lr ?? "";
    inductionSamples.value = ind.samples >= 0 ? ind.samples : "";
    const c = spec.calibration || {};
    if (c.source) {
      if (!calSource.querySelector(`option[value="${CSS.escape(c.source)}"]`)) {
        calSource.append(h("option", { value: c.source }, c.source));
      }
      calSource.value = c.source;
    }
    samples.value = c.samples ?? samples.placeholder;
    seqLen.value = c.seq_len ?? seqLen.placeholder;
    seed.value = c.seed ?? seed.placeholder;
    const ev = spec.evaluation || {};
    const sources = Array.isArray(ev.sources) ? ev.sources : ev.sources ? [ev.sources] : [];
    for (const s of sources) addEvalSource(s, s);
    for (const box of evalBox.querySelectorAll("input")) box.checked = sources.includes(box.value);
    evalSeqLen.value = ev.seq_len ?? evalSeqLen.placeholder;
    maxWindows.value = ev.max_windows ?? maxWindows.placeholder;
    syncInduction();
  }

  // Suggestions: models the service lists (if it has such a route) and models used before.
  async function loadSuggestions() {
    const names = new Set(DEFAULT_MODELS);
    const models = await api("/v1/models").catch(() => null);
    for (const m of listOf(models)) names.add(typeof m === "string" ? m : m.id || m.name);
    const jobs = await api("/v1/jobs?limit=50").catch(() => null);
    for (const j of listOf(jobs)) if (j.spec?.model) names.add(j.spec.model);
    for (const name of names) if (name) modelList.append(h("option", { value: name }));
    const datasets = await api("/v1/datasets").catch(() => null);
    for (const ds of listOf(datasets)) if (ds?.id) addDataset(ds);
  }

  const from = ctx.query.get("from");
  const ready = loadSuggestions();
  if (from) {
    ready
      .then(() => api(`/v1/jobs/${encodeURIComponent(from)}`))
      .then((job) => fill(job.spec))
      .catch((e) => ctx.notify(`Could not load ${from}: ${e.message}`, "error"));
  } else {
    model.focus();
  }
  return null;
}
