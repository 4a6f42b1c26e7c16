"""`spruce prune`: its flags come from the spec's public options (at most 20 in all), and the
experimental settings pass through --set / --experimental."""

from __future__ import annotations

import argparse

import pytest

from spruce.cli.main import build_parser
from spruce.cli.prune import _flag, spec_body
from spruce.core.spec import CompressionSpec
from spruce.core.spec.schema import leaves

pytestmark = pytest.mark.unit


def _prune_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["prune"]


def test_at_most_twenty_flags_and_one_per_public_option() -> None:
    actions = [a for a in _prune_parser()._actions if a.option_strings and "-h" not in a.option_strings]
    assert len(actions) <= 20
    flags = {s for a in actions for s in a.option_strings}
    public = [leaf for leaf in leaves(CompressionSpec) if leaf.meta.public]
    assert all(_flag(leaf.param) in flags for leaf in public)
    help_text = _prune_parser().format_help()
    assert "(default: wanda)" in help_text and "(default: 32)" in help_text  # the declared defaults


def test_flags_build_the_job_body() -> None:
    args = build_parser().parse_args([
        "prune", "--model", "m", "--sparsity", "0.6", "--method", "sparsegpt", "--preset", "reference",
        "--induction", "--samples", "8", "--seed", "3", "--eval", "pydoc", "--eval", "c4",
        "--experimental", '{"induction": {"epochs": 2}, "dampening": 0.1}',
        "--set", "dampening=0.2", "--set", "induction.targets=model", "--set", "evaluation.max_windows=5",
    ])  # fmt: skip
    body = spec_body(args)
    assert body == {
        "model": "m",
        "sparsity": 0.6,
        "method": {"pruner": "sparsegpt", "preset": "reference", "induction": True},
        "calibration": {"samples": 8, "seed": 3},
        "evaluation": {"sources": ["pydoc", "c4"]},
        "experimental": {
            "induction": {"epochs": 2, "targets": "model"},
            "dampening": 0.2,  # --set applies after --experimental
            "evaluation": {"max_windows": 5},
        },
    }
    spec = CompressionSpec.from_dict(body)
    assert spec.dampening == 0.2 and spec.order == "natural" and spec.induction.targets == "model"


def test_an_old_flag_is_refused_and_errors_name_the_flag() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prune", "--model", "m", "--sparsity", "0.5", "--swap-rounds", "0"])
    assert _flag("calibration.seed") == "--seed" and _flag("method.pruner") == "--pruner"
    assert _flag("experimental.induction.epochs") == "--set induction.epochs"
    assert spec_body(build_parser().parse_args(["prune", "--model", "m", "--sparsity", "2:4"])) == {
        "model": "m",
        "sparsity": "2:4",
    }
