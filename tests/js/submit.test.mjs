// views/submit.js matchParam: which form field an API error's `param` belongs to.

import assert from "node:assert/strict";
import test from "node:test";

import { matchParam } from "../../api/static/js/views/submit.js";

const known = new Set(["sparsity", "evaluation.sources", "method.induction", "calibration.samples"]);

test("an error goes to its own field, or to its closest shown parent", () => {
  assert.equal(matchParam("calibration.samples", known), "calibration.samples");
  assert.equal(matchParam("evaluation.sources[1]", known), "evaluation.sources");
  assert.equal(matchParam("evaluation.sources.0", known), "evaluation.sources");
  assert.equal(matchParam("method.induction.batch_size", known), "method.induction");
});

test("a param no field shows, or none, matches nothing", () => {
  assert.equal(matchParam("options.dtype", known), null);
  assert.equal(matchParam(null, known), null);
  assert.equal(matchParam("", known), null);
});
