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

import { experimentalValue, formChoices, formDefaults } from "../../api/static/js/views/submit.js";

test("the form's defaults and choices are read from the API's schema document", () => {
  const doc = {
    public: [
      { param: "model", type: "string" },
      { param: "method.pruner", choices: ["magnitude", "wanda"], default: "wanda" },
      { param: "calibration.samples", min: 1, max: 9, default: 7 },
      { param: "method.induction", default: false },
    ],
  };
  assert.deepEqual(formDefaults(doc), { "method.pruner": "wanda", "calibration.samples": 7, "method.induction": false });
  assert.deepEqual(formChoices(doc), { "method.pruner": ["magnitude", "wanda"] });
  assert.deepEqual(formDefaults(null), {});
});

test("the experimental text is a JSON object, or nothing", () => {
  assert.equal(experimentalValue(""), undefined);
  assert.equal(experimentalValue("  {} "), undefined);
  assert.deepEqual(experimentalValue('{"swap_rounds": 0}'), { swap_rounds: 0 });
  assert.throws(() => experimentalValue("[1]"), TypeError);
  assert.throws(() => experimentalValue("{nope"), SyntaxError);
});
