"""The client CLI builds the same job body as the HTTP API documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spruce.cli.client import ClientError, bar, build_body
from spruce.cli.main import build_parser

pytestmark = pytest.mark.unit


def parse(*argv: str) -> object:
    return build_parser().parse_args(["submit", *argv])


def test_flags_mirror_the_body() -> None:
    args = parse(
        "--model", "smollm2-135m", "--sparsity", "2:4", "--method", "wanda", "--allocation", "uniform",
        "--no-induction", "--calib", "pydoc", "--samples", "32", "--seq-len", "512", "--seed", "0",
        "--eval", "pydoc", "--eval", "c4",
    )  # fmt: skip
    assert build_body(args) == {  # type: ignore[arg-type]
        "model": "smollm2-135m",
        "sparsity": "2:4",
        "method": {"pruner": "wanda", "allocation": "uniform", "induction": False},
        "calibration": {"source": "pydoc", "samples": 32, "seq_len": 512, "seed": 0},
        "evaluation": {"sources": ["pydoc", "c4"]},
    }


def test_file_with_overrides(tmp_path: Path) -> None:
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"model": "m", "sparsity": "2:4", "calibration": {"samples": 8}}))
    body = build_body(parse("--file", str(job), "--sparsity", "0.6", "--seed", "3"))  # type: ignore[arg-type]
    assert body == {"model": "m", "sparsity": 0.6, "calibration": {"samples": 8, "seed": 3}}
    with pytest.raises(ClientError, match="required"):
        build_body(parse("--model", "m"))  # type: ignore[arg-type]


def test_progress_bar() -> None:
    assert bar(0.0, 4) == "[----]" and bar(0.5, 4) == "[##--]" and bar(1.2, 4) == "[####]"
