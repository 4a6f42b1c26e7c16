// Every dashboard module but the shell (app.js, which wires the page up) imports without a DOM:
// building elements happens in functions, never at import, so the pure helpers are testable here
// and a module can be loaded before the page is ready.

import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import test from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";

const JS = join(dirname(fileURLToPath(import.meta.url)), "../../api/static/js");

function modules(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? modules(join(dir, e.name)) : e.name.endsWith(".js") ? [join(dir, e.name)] : [],
  );
}

test("no module but app.js touches the page when imported", async () => {
  assert.equal(typeof globalThis.document, "undefined");
  const found = modules(JS).filter((p) => relative(JS, p) !== "app.js");
  assert.ok(found.length >= 10, `only ${found.length} modules found under ${JS}`);
  for (const path of found) await import(pathToFileURL(path).href);
});
