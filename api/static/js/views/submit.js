// The submit form: builds the POST /v1/jobs body and shows the API's validation messages next
// to the field they name (error.param is a dotted path such as "calibration.samples").
//
// The API is the one validator: the form does not check ranges itself (novalidate), so the
// messages a user sees are the same ones a script using the API gets. The form's defaults and
// choices come from the API too (GET /v1/spec, the engine's one declaration of the spec): the page
// writes none of them. It shows the public options; everything else is the job's `experimental`
// object (unstable), edited as JSON.

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

/** The public options' defaults of a GET /v1/spec document, by param ("calibration.samples": 32). */
export function formDefaults(doc) {
  const out = {};
  for (const entry of doc?.public || []) if ("default" in entry) out[entry.param] = entry.default;
  return out;
}

/** The choices of each public option that has them, by param. */
export function formChoices(doc) {
  const out = {};
  for (const entry of doc?.public || []) if (Array.isArray(entry.choices)) out[entry.param] = entry.choices;
  return out;
}

/** The `experimental` object of the form's JSON text: undefined when empty; throws when not an object. */
export function experimentalValue(text) {
  const raw = String(text ?? "").trim();
  if (raw === "") return undefined;
  const value = JSON.parse(raw);
  if (value === null || typeof value !== "object" || Array.isArray(value)) throw new TypeError("not an object");
  return Object.keys(value).length ? value : undefined;
}

// Display names of choices the API lists (a value without one shows as itself).
const CHOICE_LABELS = {
  magnitude: "Magnitude",
  wanda: "Wanda",
  sparsegpt: "SparseGPT",
  default: "Default (the engine's measured choices)",
  reference: "Reference (the papers' methods, as llm-compressor runs them)",
  uniform: "Uniform (same sparsity in every layer)",
  owl: "OWL (by outlier ratio)",
};

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

  /** A number input; its value and bounds are set from the API's schema (applySchema). */
  function numberInput(name) {
    return h("input", { type: "number", name, inputmode: "numeric", step: "1" });
  }

  /** A select whose options are set from the API's schema (applySchema). */
  function selectInput(name) {
    return h("select", { name });
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
  const pruner = selectInput("pruner");
  const preset = selectInput("preset");
  const allocation = selectInput("allocation");
  const induction = h("input", { type: "checkbox", name: "induction", id: fieldId("method.induction") });
  const dtype = selectInput("dtype");
  // Everything that is not a public option: the job's `experimental` object, as JSON (unstable).
  const experimental = h("textarea", {
    name: "experimental",
    rows: 3,
    spellcheck: "false",
    placeholder: '{"swap_rounds": 0, "induction": {"epochs": 2}}',
  });

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
  const samples = numberInput("samples");
  const seqLen = numberInput("seq_len");
  const seed = numberInput("seed");

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
  for (const [value, text] of NAMED_SETS) addEvalSource(value, text);

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
        field("method.preset", "Preset", preset),
        field("method.allocation", "Layer allocation", allocation),
        field("options.dtype", "Model dtype", dtype),
      ),
      h(
        "div",
        { class: "field field-inline" },
        induction,
        h("label", { for: induction.id }, "Sparsity Induction (learn scales and shifts before pruning)"),
        h("p", { class: "field-error", id: `${fieldId("method.induction")}-error` }),
      ),
      h(
        "details",
        { class: "experimental" },
        h("summary", {}, "Experimental settings"),
        field("experimental", "Experimental settings (JSON; unstable, see docs/spec.md)", experimental, {
          help: "Any setting that is not above, e.g. {\"swap_rounds\": 0}; unset ones take the preset's value.",
        }),
      ),
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
    ),
    h("div", { class: "actions" }, submit, h("a", { class: "btn btn-ghost", href: "#/jobs" }, "Cancel")),
  );
  // The induction checkbox and the section share the error slot above.
  fields.set("method.induction", {
    control: induction,
    error: form.querySelector(`#${fieldId("method.induction")}-error`),
    container: induction.parentElement,
  });
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

  // --- defaults and choices: the API's schema -------------------------------------------------
  const numbers = { "calibration.samples": samples, "calibration.seq_len": seqLen, "calibration.seed": seed };
  const selects = { "method.pruner": pruner, "method.preset": preset, "method.allocation": allocation, "options.dtype": dtype };
  // The schema may arrive after the user has typed: a default never overwrites their value.
  const touched = new WeakSet();
  for (const kind of ["input", "change"]) form.addEventListener(kind, (e) => touched.add(e.target));
  function applySchema(doc) {
    const defaults = formDefaults(doc);
    const choices = formChoices(doc);
    for (const [param, select] of Object.entries(selects)) {
      select.replaceChildren(
        ...(choices[param] || []).map((value) => h("option", { value }, CHOICE_LABELS[value] || value)),
      );
      if (param in defaults && !touched.has(select)) select.value = defaults[param];
    }
    for (const entry of doc?.public || []) {
      const input = numbers[entry.param];
      if (!input) continue;
      if ("min" in entry) input.min = entry.min;
      if ("max" in entry) input.max = entry.max;
      if (!("default" in entry)) continue;
      input.placeholder = entry.default;
      if (!touched.has(input)) input.value = entry.default;
    }
    if (!touched.has(induction)) induction.checked = Boolean(defaults["method.induction"]);
    const sources = defaults["evaluation.sources"] || [];
    for (const box of evalBox.querySelectorAll("input")) {
      if (!touched.has(box)) box.checked = sources.includes(box.value);
    }
    if ("calibration.source" in defaults && !touched.has(calSource)) calSource.value = defaults["calibration.source"];
  }
  const schemaReady = api("/v1/spec").then(applySchema, (e) =>
    ctx.notify(`Could not load the job schema: ${e.message}`, "error"),
  );

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
    let extra;
    try {
      extra = experimentalValue(experimental.value);
    } catch {
      throw new ApiError(0, "Enter a JSON object, e.g. {\"swap_rounds\": 0}.", { param: "experimental", code: "client" });
    }
    return prune({
      model: model.value.trim(),
      sparsity: sparsityValue(),
      method: { pruner: pruner.value, preset: preset.value, allocation: allocation.value, induction: induction.checked },
      calibration: prune({
        source: calSource.value,
        samples: numberValue(samples, "calibration.samples"),
        seq_len: numberValue(seqLen, "calibration.seq_len"),
        seed: numberValue(seed, "calibration.seed"),
      }),
      evaluation: { sources: [...evalBox.querySelectorAll("input:checked")].map((c) => c.value) },
      options: { dtype: dtype.value },
      experimental: extra,
    });
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
    if (m.preset) preset.value = m.preset;
    if (m.allocation) allocation.value = m.allocation;
    induction.checked = m.induction === true;
    if (spec.options?.dtype) dtype.value = spec.options.dtype;
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
    const exp = spec.experimental && Object.keys(spec.experimental).length ? spec.experimental : null;
    experimental.value = exp ? JSON.stringify(exp) : "";
    experimental.closest("details").open = Boolean(exp);
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
  const ready = Promise.all([loadSuggestions(), schemaReady]);
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
