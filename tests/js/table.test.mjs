// table.js: the table model a view's columns make of its rows (the markup comes from it alone).

import assert from "node:assert/strict";
import test from "node:test";

import { tableModel } from "../../api/static/js/table.js";

const columns = [
  { label: "File", header: true, cls: "mono", cell: (r) => r.name },
  { label: "Size", num: true, cell: (r) => `${r.size} B` },
  { label: "SHA-256", cls: "mono muted", title: (r) => r.sha, cell: (r) => r.sha.slice(0, 4) },
  { label: "Action", srOnly: true, cell: () => "button" },
];

test("the head names every column, numeric ones aligned and hidden labels marked", () => {
  const { head } = tableModel(columns, []);
  assert.deepEqual(head, [
    { label: "File", cls: null, srOnly: false },
    { label: "Size", cls: "num", srOnly: false },
    { label: "SHA-256", cls: null, srOnly: false },
    { label: "Action", cls: null, srOnly: true },
  ]);
});

test("each row has one cell per column, in order, with its classes and title", () => {
  const rows = [
    { name: "report.json", size: 10, sha: "abcdef" },
    { name: "model/config.json", size: 20, sha: "012345" },
  ];
  const { body } = tableModel(columns, rows, { rowAttrs: (r) => ({ "data-name": r.name }) });
  assert.equal(body.length, 2);
  assert.deepEqual(body[1].attrs, { "data-name": "model/config.json" });
  assert.deepEqual(body[0].cells, [
    { content: "report.json", header: true, cls: "mono", title: null },
    { content: "10 B", header: false, cls: "num", title: null },
    { content: "abcd", header: false, cls: "mono muted", title: "abcdef" },
    { content: "button", header: false, cls: null, title: null },
  ]);
});

test("rows without rowAttrs get no attributes", () => {
  const { body } = tableModel([{ label: "A", cell: (r) => r }], ["x"]);
  assert.deepEqual(body, [{ attrs: {}, cells: [{ content: "x", header: false, cls: null, title: null }] }]);
});
