// Tables built from data: a view lists its columns (how to read a row) and this module alone
// decides the markup (header scopes, numeric alignment, screen-reader-only labels).
//
// tableModel is pure (no DOM), so what a table shows is unit-tested under Node; renderTable
// turns the model into elements.

import { h } from "./dom.js";

/**
 * A column: {label, cell(row) -> string | Node, num?, header?, cls?, title?(row), srOnly?}.
 * `num` right-aligns figures; `header` makes the cell the row's <th scope="row">; `srOnly`
 * keeps the label for screen readers only (a column of buttons needs no visible heading).
 */
export function tableModel(columns, rows, { rowAttrs = () => ({}) } = {}) {
  const classes = (c) => [c.num ? "num" : "", c.cls || ""].filter(Boolean).join(" ") || null;
  return {
    head: columns.map((c) => ({ label: c.label, cls: c.num ? "num" : null, srOnly: Boolean(c.srOnly) })),
    body: rows.map((row) => ({
      attrs: rowAttrs(row),
      cells: columns.map((c) => ({
        content: c.cell(row),
        header: Boolean(c.header),
        cls: classes(c),
        title: c.title ? c.title(row) : null,
      })),
    })),
  };
}

/** The <table> of a model from tableModel; `attrs` go on the table (class defaults to "table"). */
export function renderTable(model, attrs = {}) {
  return h(
    "table",
    { class: "table", ...attrs },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        model.head.map((c) =>
          h(
            "th",
            { scope: "col", class: c.cls },
            c.srOnly ? h("span", { class: "sr-only" }, c.label) : c.label,
          ),
        ),
      ),
    ),
    h(
      "tbody",
      {},
      model.body.map((r) =>
        h(
          "tr",
          r.attrs,
          r.cells.map((c) =>
            h(
              c.header ? "th" : "td",
              { scope: c.header ? "row" : null, class: c.cls, title: c.title },
              c.content,
            ),
          ),
        ),
      ),
    ),
  );
}

/** tableModel and renderTable in one call, for views that do not need the model. */
export function table(columns, rows, attrs = {}, options = {}) {
  return renderTable(tableModel(columns, rows, options), attrs);
}
