// Small DOM helpers. Everything from the API is inserted as text (never innerHTML), so a job
// name or an error message cannot inject markup.

/**
 * Create an element: h("a", {href: "#", class: "x", onclick: fn}, "text", child, [more]).
 * Attributes whose value is null, undefined or false are left out; true gives an empty attribute.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else if (name === "value" && "value" in el) {
      el.value = value;
    } else if (name === "checked" || name === "selected") {
      el[name] = Boolean(value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

/** Append strings, nodes and (nested) arrays of them; null/undefined/false are skipped. */
export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

/** Replace the children of `el` only when the new content differs (keeps focus and selection). */
export function patch(el, ...children) {
  const next = append(document.createElement(el.tagName), children);
  if (next.innerHTML !== el.innerHTML) {
    clear(el);
    while (next.firstChild) el.appendChild(next.firstChild);
  }
  return el;
}

/** A progress bar with an accessible value; `fraction` is 0..1 or null for "not started". */
export function progressBar(fraction, { label = "Progress", status = "" } = {}) {
  const pct = fraction === null || fraction === undefined ? 0 : Math.max(0, Math.min(1, fraction)) * 100;
  const bar = h("div", {
    class: `progress ${status ? `progress-${status}` : ""}`,
    role: "progressbar",
    "aria-label": label,
    "aria-valuemin": 0,
    "aria-valuemax": 100,
    "aria-valuenow": Math.round(pct),
    "aria-valuetext": `${Math.round(pct)}%`,
  });
  const fill = h("div", { class: "progress-fill" });
  // A CSSOM width (not a style attribute) so the page's content security policy allows it.
  fill.style.width = `${pct.toFixed(1)}%`;
  bar.append(fill);
  return bar;
}

export function statusBadge(status) {
  return h("span", { class: `badge badge-${status || "unknown"}` }, status || "unknown");
}

/** A <dl> from [term, description] pairs (descriptions may be nodes); null pairs are skipped. */
export function definitionList(pairs, cls = "facts") {
  return h(
    "dl",
    { class: cls },
    pairs.filter(Boolean).map(([term, desc]) => h("div", {}, h("dt", {}, term), h("dd", {}, desc))),
  );
}

/**
 * A <dl> of facts {term, text, strong?, title?, cls?} (the shape job/report.js returns): `strong`
 * marks the figure that matters, `title` explains a term on hover, `cls` styles the value.
 */
export function factList(facts, cls = "facts") {
  return definitionList(
    facts.map((f) => [
      f.term,
      f.strong || f.title || f.cls
        ? h(f.strong ? "strong" : "span", { title: f.title, class: f.cls }, f.text)
        : f.text,
    ]),
    cls,
  );
}
