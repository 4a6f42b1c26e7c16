"""The compression spec: parsing of the job body, errors that name the field, presets and the plan."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest

from spruce.core.errors import SpecError
from spruce.core.spec import (
    FIT_SHARES,
    PRESETS,
    PRUNER_TRAITS,
    PRUNERS,
    SEED_MAX,
    CompressionSpec,
    Pruner,
    Sparsity,
)
from spruce.core.spec.schema import leaves, moved
from tests.unit.data.make_default_plan import values

pytestmark = pytest.mark.unit

BODY = {
    "model": "smollm2-135m",
    "sparsity": "2:4",
    "method": {"pruner": "wanda", "allocation": "uniform", "induction": False},
    "calibration": {"source": "pydoc", "samples": 32, "seq_len": 512, "seed": 0},
    "evaluation": {"sources": ["pydoc"]},
}


def _with(path: str, value: object) -> dict:
    body = json.loads(json.dumps(BODY))
    keys = path.split(".")
    node = body
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return body


def _exp(body: dict, **settings: object) -> dict:
    """``body`` with experimental settings (``induction__epochs=1`` for the nested ones)."""
    for key, value in settings.items():
        node = body.setdefault("experimental", {})
        *heads, last = key.split("__")
        for head in heads:
            node = node.setdefault(head, {})
        node[last] = value
    return body


@pytest.mark.parametrize(
    ("value", "ratio", "n", "m"),
    [
        (0.5, 0.5, None, None),
        ("0.7", 0.7, None, None),
        ("2:4", 0.5, 2, 4),
        ("4:8", 0.5, 4, 8),
        ("1:4", 0.75, 1, 4),
    ],
)
def test_sparsity_parses_ratios_and_nm(value, ratio, n, m):
    s = Sparsity.parse(value)
    assert (s.ratio, s.n, s.m) == (pytest.approx(ratio), n, m)


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.1, "4:4", "5:4", "0:4", "two:four", True, None, [0.5]])
def test_sparsity_rejects_bad_values(value):
    with pytest.raises(SpecError) as err:
        Sparsity.parse(value)
    assert err.value.param == "sparsity"


def test_body_round_trips():
    spec = CompressionSpec.from_dict(BODY)
    assert spec.pruner == "wanda" and spec.sparsity.is_nm and spec.calibration.samples == 32
    assert spec.preset == "default" and spec.to_dict()["experimental"] == {}
    assert CompressionSpec.from_dict(spec.to_dict()) == spec


def test_experimental_settings_round_trip_as_the_difference_from_the_preset():
    body = _exp(
        _with("method.preset", "reference"), swap_rounds=3, induction__epochs=2, evaluation__max_windows=9
    )
    spec = CompressionSpec.from_dict(body)
    assert (spec.swap_rounds, spec.induction.epochs, spec.evaluation.max_windows) == (3, 2, 9)
    assert spec.order == "natural"  # the preset's, not overridden
    assert spec.to_dict()["experimental"] == {
        "swap_rounds": 3,
        "induction": {"epochs": 2},
        "evaluation": {"max_windows": 9},
    }
    assert CompressionSpec.from_dict(spec.to_dict()) == spec
    # the default preset's own value is no override: it round-trips as nothing
    same = CompressionSpec.from_dict(_exp(_with("sparsity", 0.5), swap_rounds=-1))
    assert same.to_dict()["experimental"] == {} and same == CompressionSpec.from_dict(_with("sparsity", 0.5))


def test_at_most_twelve_public_options():
    public = [leaf.param for leaf in leaves(CompressionSpec) if leaf.meta.public]
    assert len(public) <= 12
    assert set(public) == {
        "model", "sparsity", "method.pruner", "method.preset", "method.allocation", "method.induction",
        "calibration.source", "calibration.samples", "calibration.seq_len", "calibration.seed",
        "evaluation.sources", "options.dtype",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("path", "value", "param"),
    [
        ("method.pruner", "random", "method.pruner"),
        ("method.preset", "fastest", "method.preset"),
        ("method.allocation", "greedy", "method.allocation"),
        ("method.induction", "yes", "method.induction"),
        ("calibration.samples", 0, "calibration.samples"),
        ("calibration.samples", "many", "calibration.samples"),
        ("calibration.seq_len", 4, "calibration.seq_len"),
        ("calibration.seed", -1, "calibration.seed"),
        ("calibration.seed", 2**70, "calibration.seed"),  # numpy and torch take 0 .. 2^32-1 at most
        ("experimental.induction.epochs", -2, "experimental.induction.epochs"),
        ("experimental.induction.lr", -1.0, "experimental.induction.lr"),
        ("experimental.induction.lr", 0.0, "experimental.induction.lr"),
        ("experimental.induction.mask", "foo", "experimental.induction.mask"),
        (
            "experimental.induction.enabled",
            True,
            "experimental.induction.enabled",
        ),  # public: method.induction
        ("experimental.dampening", -1, "experimental.dampening"),
        ("experimental.fit_to", "everything", "experimental.fit_to"),
        ("experimental.row_weight", "columns", "experimental.row_weight"),
        ("experimental.row_weight", 1, "experimental.row_weight"),
        ("experimental.sequential", "token", "experimental.sequential"),
        ("experimental.swap_rounds", -2, "experimental.swap_rounds"),
        ("experimental.swap_rounds", 2.5, "experimental.swap_rounds"),
        ("experimental.swap_rounds", "many", "experimental.swap_rounds"),
        ("experimental.swap_shrink", -0.5, "experimental.swap_shrink"),
        ("experimental.swap_shrink", 1.5, "experimental.swap_shrink"),
        ("experimental.fit_share", 1.5, "experimental.fit_share"),
        ("experimental.fit_share", "half", "experimental.fit_share"),
        ("experimental.compute_dtype", "float8", "experimental.compute_dtype"),
        ("experimental.pruner", "wanda", "experimental.pruner"),  # public: method.pruner
        ("experimental.colour", "blue", "experimental.colour"),
        ("experimental.induction.colour", 1, "experimental.induction.colour"),
        ("experimental", [1], "experimental"),
        ("options.precision", "bfloat16", "options.precision"),
        ("model", "", "model"),
        ("colour", "blue", "colour"),
        ("calibration.colour", "blue", "calibration.colour"),
        ("evaluation.sources", [1], "evaluation.sources"),
        ("method", "wanda", "method"),
    ],
)
def test_bad_fields_are_named(path, value, param):
    with pytest.raises(SpecError) as err:
        CompressionSpec.from_dict(_with(path, value))
    assert err.value.param == param
    assert err.value.message


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("method.swap_rounds", "experimental.swap_rounds"),
        ("method.fit_to", "experimental.fit_to"),
        ("method.blocksize", "experimental.blocksize"),
        ("options.compute_dtype", "experimental.compute_dtype"),
        ("options.batch_size", "experimental.batch_size"),
        ("calibration.field", "experimental.calibration.field"),
        ("evaluation.max_windows", "experimental.evaluation.max_windows"),
    ],
)
def test_a_moved_field_says_where_it_went(old, new):
    assert moved(CompressionSpec)[old] == new
    with pytest.raises(SpecError) as err:
        CompressionSpec.from_dict(_with(old, 1))
    assert err.value.param == old and f"moved to {new}" in err.value.message


def test_induction_is_a_switch_and_its_settings_moved():
    with pytest.raises(SpecError, match=r"experimental\.induction") as err:
        CompressionSpec.from_dict(_with("method.induction", {"enabled": True, "epochs": 1}))
    assert err.value.param == "method.induction"
    spec = CompressionSpec.from_dict(_exp(_with("method.induction", True), induction__epochs=1))
    assert spec.induction.enabled and spec.induction.epochs == 1


def test_every_moved_field_is_an_experimental_option():
    gone = moved(CompressionSpec)
    assert len(gone) == sum(1 for leaf in leaves(CompressionSpec) if not leaf.meta.public)
    assert all(new.startswith("experimental.") for new in gone.values())


def test_the_seed_bound_is_what_numpy_takes():
    import numpy as np

    spec = CompressionSpec.from_dict(_with("calibration.seed", SEED_MAX))
    np.random.default_rng(spec.calibration.seed)
    np.random.seed(spec.calibration.seed)  # the legacy seed: 32 bits, the narrowest in use


def test_owl_needs_an_unstructured_ratio():
    with pytest.raises(SpecError) as err:
        CompressionSpec.from_dict(_with("method.allocation", "owl"))
    assert err.value.param == "method.allocation"
    spec = CompressionSpec.from_dict(_with("method.allocation", "owl") | {"sparsity": 0.7})
    assert spec.allocation == "owl" and spec.resolve().owl == (0.08, 5.0)


def _default_cases():
    data = json.loads((Path(__file__).parent / "data" / "default_plan.json").read_text())
    return data["columns"], data["cases"]


def test_the_default_preset_resolves_exactly_as_before_presets():
    """Every case of the fixture (pruner x sparsity x induction x experimental setting), resolved by
    the spec of commit 5137d1f (tests/unit/data/make_default_plan.py), resolves to the same values."""
    columns, cases = _default_cases()
    assert len(cases) > 300
    for pruner, sparsity, induction, variant, expected in cases:
        settings = {k.replace(".", "__"): v for k, v in variant.items()}
        body = _exp({"model": "m", "sparsity": sparsity, "method": {"pruner": pruner, "induction": induction}},
                    **settings)  # fmt: skip
        want = dict(zip(columns, expected, strict=True))
        if want["induction_scales_skipped"]:  # the message names the option's new place
            want["induction_scales_skipped"] = want["induction_scales_skipped"].replace(
                "method.fit_to", "experimental.fit_to"
            )
        assert values(CompressionSpec.from_dict(body)) == want, (pruner, sparsity, induction, variant)


def test_the_plan_agrees_with_the_spec_views():
    _, cases = _default_cases()
    for pruner, sparsity, induction, _, _ in cases[::7]:
        spec = CompressionSpec.from_dict({"model": "m", "sparsity": sparsity,
                                          "method": {"pruner": pruner, "induction": induction}})  # fmt: skip
        plan = spec.resolve()
        assert (plan.swaps, plan.fits_dense_model, plan.fit_weight) == (
            spec.swaps,
            spec.fits_dense_model,
            spec.fit_weight,
        )
        assert (plan.wants_hessian, plan.hessian_every, plan.walks_in_turn) == (
            spec.wants_hessian,
            spec.hessian_every,
            spec.walks_in_turn,
        )
        if induction:
            assert plan.induction is not None and plan.induction.epochs == spec.induction_epochs
            assert plan.induction.recovers is spec.recovers
        else:
            assert plan.induction is None
        assert json.loads(json.dumps(plan.to_dict()))["pruner"] == pruner  # the report's JSON


@pytest.mark.parametrize(("sparsity", "nm"), [(0.5, False), ("2:4", True), (0.7, False)])
def test_the_reference_preset_resolves_to_the_papers_methods(sparsity, nm):
    def plan(pruner, induction=False):
        body = {"model": "m", "sparsity": sparsity,
                "method": {"pruner": pruner, "preset": "reference", "induction": induction}}  # fmt: skip
        return CompressionSpec.from_dict(body).resolve()

    gpt = plan("sparsegpt")
    assert not gpt.fits_dense_model and gpt.fit_weight == 0.0 and gpt.order == "natural"
    assert gpt.row_weight == (None if nm else "none") and gpt.blocksize == 128 and gpt.dampening == 0.01
    assert gpt.sequential == "layer" and gpt.compute_dtype == "model" and gpt.wants_hessian
    assert gpt.batch_size == 1  # one calibration sequence per forward, as llm-compressor
    assert gpt.attention == "eager"  # llm-compressor forces eager attention while it calibrates
    wanda = plan("wanda")
    assert wanda.swaps == 0 and not wanda.fits_dense_model and not wanda.wants_hessian
    assert wanda.sequential == "layer" and wanda.order is None
    mag = plan("magnitude")
    assert mag.swaps == 0 and not mag.fits_dense_model and mag.sequential == "layer"
    for pruner in ("magnitude", "wanda", "sparsegpt"):  # induction as the paper: train from 1, no extras
        ind = plan(pruner, induction=True).induction
        assert ind is not None and ind.scales_skipped is None and ind.targets == "layer"
        assert (ind.epochs, ind.init, ind.samples, ind.permute_rounds) == (1, ("one", 1.0), 0, 0)
        assert not ind.recovers and not ind.fits_model and not ind.settings["per_linear"]
    # each setting of the table is what the spec holds
    spec = CompressionSpec.from_dict({"model": "m", "sparsity": sparsity, "method": {"preset": "reference"}})
    for path, value in PRESETS["reference"].items():
        node = spec
        for part in path.split("."):
            node = getattr(node, part)
        assert node == value, path


def test_the_default_preset_is_the_declared_defaults():
    assert PRESETS["default"] == {}
    spec = CompressionSpec.from_dict({"model": "m", "sparsity": 0.5})
    assert spec == CompressionSpec(model="m", sparsity=Sparsity.parse(0.5))


@pytest.mark.parametrize(
    ("pruner", "sparsity", "fit_to", "fits"),
    [
        ("sparsegpt", "2:4", "auto", True),
        ("sparsegpt", 0.7, "auto", True),
        ("sparsegpt", 0.5, "auto", True),
        ("sparsegpt", 0.4, "auto", False),  # not measured below 50%: the paper's fit
        ("sparsegpt", 0.5, "model", True),
        ("sparsegpt", "2:4", "layer", False),
        ("wanda", "2:4", "auto", False),  # Wanda's fit is asked for, not auto
        ("wanda", 0.7, "auto", False),
        ("wanda", 0.5, "model", True),  # through its swaps (the default rounds)
    ],
)
def test_auto_fit_follows_the_measured_rule(pruner, sparsity, fit_to, fits):
    body = _exp(_with("method.pruner", pruner) | {"sparsity": sparsity}, fit_to=fit_to)
    assert CompressionSpec.from_dict(body).fits_dense_model is fits


@pytest.mark.parametrize("pruner", ["sparsegpt", "wanda"])
def test_fit_to_model_is_a_setting_of_the_pruners_that_read_statistics(pruner):
    spec = CompressionSpec.from_dict(_exp(_with("method.pruner", pruner), fit_to="model"))
    assert (
        spec.fit_to == "model" and spec.fits_dense_model and CompressionSpec.from_dict(spec.to_dict()) == spec
    )


def test_wanda_fits_only_through_its_swaps_and_not_beside_trained_scales():
    body = _exp(_with("method.pruner", "wanda"), swap_rounds=0)  # the paper's Wanda: nothing could fit
    assert not CompressionSpec.from_dict(body).fits_dense_model
    with pytest.raises(SpecError, match="swap_rounds") as err:
        CompressionSpec.from_dict(_exp(body, fit_to="model"))
    assert err.value.param == "experimental.fit_to"
    # induction that trains its scales (explicit epochs) fits them to the dense model itself;
    # with Wanda fitting the dense model too, the scales are skipped (as for SparseGPT's fit)
    trains = _exp(_with("method.induction", True), induction__epochs=1)
    spec = CompressionSpec.from_dict(trains)
    assert not spec.fits_dense_model and spec.induction_scales_skipped is None and spec.induction_fits_model
    spec = CompressionSpec.from_dict(_exp(trains, fit_to="model"))
    assert spec.fits_dense_model and "fit_to" in (spec.induction_scales_skipped or "")
    default = _exp(_with("method.induction", True), fit_to="model")  # no training with swaps by default
    spec = CompressionSpec.from_dict(default)
    assert spec.fits_dense_model and "swaps" in (spec.induction_scales_skipped or "")


@pytest.mark.parametrize(
    ("pruner", "sparsity", "fit_to", "fit_share", "weight"),
    [
        ("sparsegpt", "2:4", "auto", -1, FIT_SHARES["sparsegpt"]),
        ("sparsegpt", 0.4, "auto", -1, 0.0),  # fits the dense layer below 50%
        ("sparsegpt", 0.5, "model", 1, 1.0),
        ("sparsegpt", "4:8", "auto", 0.3, 0.3),
        ("wanda", "2:4", "auto", -1, 0.0),
        ("wanda", "2:4", "model", -1, FIT_SHARES["wanda"]),
        ("wanda", 0.7, "model", 0.5, 0.5),
    ],
)
def test_fit_share_resolves_per_pruner(pruner, sparsity, fit_to, fit_share, weight):
    body = _exp(_with("method.pruner", pruner) | {"sparsity": sparsity}, fit_to=fit_to, fit_share=fit_share)
    spec = CompressionSpec.from_dict(body)
    assert spec.fit_weight == weight == spec.resolve().fit_weight
    assert CompressionSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("pruner", "sparsity", "fit_to", "fit_share", "says"),
    [
        ("sparsegpt", 0.4, "auto", 0.5, "fits the dense layer"),  # auto fits the layer below 50%
        ("sparsegpt", "2:4", "layer", 0.5, "fits the dense layer"),
        ("wanda", "2:4", "auto", 0.25, "fits the dense layer"),
        ("magnitude", "2:4", "auto", 0.5, "fits the dense layer"),
        ("sparsegpt", "2:4", "auto", 0, "(0, 1]"),
        ("sparsegpt", "2:4", "auto", -0.5, "(0, 1]"),
    ],
)
def test_fit_share_is_refused_where_nothing_fits_the_dense_model(pruner, sparsity, fit_to, fit_share, says):
    body = _exp(_with("method.pruner", pruner) | {"sparsity": sparsity}, fit_to=fit_to, fit_share=fit_share)
    with pytest.raises(SpecError) as err:
        CompressionSpec.from_dict(body)
    assert err.value.param == "experimental.fit_share" and says in err.value.message


def test_fit_to_model_is_refused_for_magnitude():
    with pytest.raises(SpecError, match="magnitude") as err:
        CompressionSpec.from_dict(_exp(_with("method.pruner", "magnitude"), fit_to="model"))
    assert err.value.param == "experimental.fit_to"


@pytest.mark.parametrize(
    ("pruner", "sparsity", "induction", "epochs", "ok"),
    [
        ("sparsegpt", "2:4", False, None, True),
        ("sparsegpt", 0.5, False, None, True),
        ("wanda", 0.7, False, None, True),
        ("sparsegpt", "2:4", True, None, True),  # fits the dense model: induction is skipped there
        ("sparsegpt", 0.5, True, None, True),  # fits the dense model: the scales are skipped
        ("sparsegpt", 0.5, True, 1, True),  # ... even with epochs asked for
        ("sparsegpt", 0.4, True, None, True),  # unstructured: the scales are skipped (no epochs by default)
        ("sparsegpt", 0.4, True, 1, False),  # induction trains before pruning
        ("wanda", 0.5, True, None, True),  # with swaps the scales are skipped (no epochs by default)
        ("wanda", 0.5, True, 1, False),  # training asked for
        ("magnitude", 0.5, False, None, False),  # no statistics: nothing to take in turn
    ],
)
def test_sequential_linear_needs_statistics_and_no_induction(pruner, sparsity, induction, epochs, ok):
    body = _with("method.pruner", pruner) | {"sparsity": sparsity}
    body["method"]["induction"] = induction
    _exp(body, sequential="linear", **({} if epochs is None else {"induction__epochs": epochs}))
    if ok:
        spec = CompressionSpec.from_dict(body)
        assert spec.sequential == "linear" and CompressionSpec.from_dict(spec.to_dict()) == spec
        assert spec.resolve().sequential == "linear"
    else:
        with pytest.raises(SpecError, match="linear") as err:
            CompressionSpec.from_dict(body)
        assert err.value.param == "experimental.sequential"
    body["experimental"]["sequential"] = "layer"  # always valid: the walk every pruner can take
    assert CompressionSpec.from_dict(body).resolve().sequential == "layer"


@pytest.mark.parametrize(
    ("pruner", "rounds", "resolved", "ok"),
    [
        ("wanda", -1, 20, True),  # the default: Wanda refines its mask
        ("wanda", 0, 0, True),  # the paper's Wanda
        ("wanda", 50, 50, True),
        ("magnitude", -1, 0, True),
        ("magnitude", 0, 0, True),
        ("magnitude", 5, None, False),  # data-free: no X^T X to swap against
        ("sparsegpt", -1, 0, True),
        ("sparsegpt", 5, None, False),  # changes the weights it keeps: a mask swap does not apply
    ],
)
def test_swap_rounds_refine_wanda_only(pruner, rounds, resolved, ok):
    body = _exp(_with("method.pruner", pruner), swap_rounds=rounds)
    if ok:
        spec = CompressionSpec.from_dict(body)
        assert spec.swaps == resolved and CompressionSpec.from_dict(spec.to_dict()) == spec
        assert spec.wants_hessian is (pruner == "sparsegpt" or resolved > 0)
    else:
        with pytest.raises(SpecError, match=pruner) as err:
            CompressionSpec.from_dict(body)
        assert err.value.param == "experimental.swap_rounds"


@pytest.mark.parametrize(
    ("pruner", "rounds", "shrink", "resolved", "ok"),
    [
        ("wanda", -1, -1.0, 0.5, True),  # the default: the correlations half shrunk
        ("wanda", -1, 0.0, 0.0, True),  # the full X^T X
        ("wanda", 5, 0.25, 0.25, True),
        ("wanda", 0, -1.0, 0.0, True),  # no swaps: nothing to shrink
        ("wanda", 0, 0.5, None, False),
        ("sparsegpt", -1, -1.0, 0.0, True),
        ("magnitude", -1, 0.5, None, False),
    ],
)
def test_swap_shrink_resolves_per_pruner_and_needs_swaps(pruner, rounds, shrink, resolved, ok):
    body = _exp(_with("method.pruner", pruner), swap_rounds=rounds, swap_shrink=shrink)
    if ok:
        spec = CompressionSpec.from_dict(body)
        assert spec.resolve().swap_shrink == resolved
        assert CompressionSpec.from_dict(spec.to_dict()) == spec
    else:
        with pytest.raises(SpecError, match="no swaps") as err:
            CompressionSpec.from_dict(body)
        assert err.value.param == "experimental.swap_shrink"


def test_induction_is_valid_with_every_pruner_and_structure():
    for pruner in ("magnitude", "wanda", "sparsegpt"):
        for sparsity in (0.5, "2:4", "4:8"):
            body = _with("method.pruner", pruner) | {"sparsity": sparsity}
            body["method"]["induction"] = True
            assert CompressionSpec.from_dict(_exp(body, induction__epochs=1)).induction.enabled


def test_every_number_that_reaches_torch_or_numpy_is_bounded():
    for leaf in leaves(CompressionSpec):
        if isinstance(leaf.default, (int, float)) and not isinstance(leaf.default, bool):
            assert leaf.meta.lo is not None and leaf.meta.hi is not None, leaf.path
            assert leaf.meta.hi <= SEED_MAX, leaf.path


def test_the_traits_table_is_the_one_list_of_pruners():
    assert PRUNERS == tuple(PRUNER_TRAITS) == typing.get_args(Pruner)


@pytest.mark.parametrize(
    ("pruner", "without_swaps", "with_swaps"),
    [("magnitude", False, False), ("wanda", False, True), ("sparsegpt", True, True)],
)
def test_the_hessian_is_wanted_by_the_pruners_step_or_its_swaps(pruner, without_swaps, with_swaps):
    t = PRUNER_TRAITS[pruner]
    assert (t.wants_hessian(0), t.wants_hessian(20)) == (without_swaps, with_swaps)
    swaps = 20 if t.swaps else -1
    spec = CompressionSpec.from_dict(_exp(_with("method.pruner", pruner), swap_rounds=swaps))
    assert spec.resolve().wants_hessian is with_swaps
