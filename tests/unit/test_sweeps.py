"""The pure parts of sweeps: the grid, the status a sweep derives from its children, the table,
the Pareto front and the sparsest row within a perplexity budget."""

from __future__ import annotations

from typing import Any

import pytest

from spruce.common import sweeps

pytestmark = pytest.mark.unit

SPEC: dict[str, Any] = {"model": "m", "sparsity": 0.3, "method": {"pruner": "wanda", "allocation": "uniform"}}


def row(
    job: str, sparsity: float | None, sparse: float | None, dense: float = 10.0, status: str = "succeeded"
) -> dict[str, Any]:
    child = {"job": job, "target": sparsity, "pruner": "wanda", "preset": None}
    results = None
    if sparsity is not None:
        results = {
            "sparsity": {"overall": sparsity},
            "perplexity": {"dense": {"pydoc": dense}, "sparse": {} if sparse is None else {"pydoc": sparse}},
            "sizes": {"hf_bytes": 100, "compact_bytes": 60},
        }
    return sweeps.table_row(child, status, results)


def test_expand_targets_outermost_and_sets_each_axis() -> None:
    children = sweeps.expand(SPEC, ["0.5", "2:4"], pruners=["wanda", "sparsegpt"], presets=None)
    cells = [(c.target, c.pruner, c.preset, c.index) for c in children]
    assert cells == [
        ("0.5", "wanda", None, (0, 0, None)),
        ("0.5", "sparsegpt", None, (0, 1, None)),
        ("2:4", "wanda", None, (1, 0, None)),
        ("2:4", "sparsegpt", None, (1, 1, None)),
    ]
    assert [c.body["sparsity"] for c in children] == ["0.5", "0.5", "2:4", "2:4"]
    assert [c.body["method"]["pruner"] for c in children] == ["wanda", "sparsegpt", "wanda", "sparsegpt"]
    assert all(c.body["method"]["allocation"] == "uniform" for c in children)  # the rest of the spec kept
    assert SPEC["sparsity"] == 0.3 and SPEC["method"]["pruner"] == "wanda"  # the input is not mutated


def test_expand_without_axes_keeps_the_spec_method() -> None:
    children = sweeps.expand({"model": "m"}, [0.5, 0.7], presets=["reference"])
    assert [c.body for c in children] == [
        {"model": "m", "sparsity": 0.5, "method": {"preset": "reference"}},
        {"model": "m", "sparsity": 0.7, "method": {"preset": "reference"}},
    ]
    assert sweeps.grid_size([1, 2, 3], ["a", "b"], None) == 6
    assert sweeps.grid_size([1], None, ["x", "y", "z"]) == 3


def test_item_param_names_the_sweep_field() -> None:
    child = sweeps.expand(SPEC, [0.5, 0.6], pruners=["wanda", "bogus"])[3]
    assert sweeps.item_param(child, "sparsity") == "targets[1]"
    assert sweeps.item_param(child, "method.pruner") == "pruners[1]"
    assert sweeps.item_param(child, "calibration.samples") == "spec.calibration.samples"
    assert sweeps.item_param(child, None) == "spec"
    no_axis = sweeps.expand(SPEC, [0.5])[0]
    assert sweeps.item_param(no_axis, "method.pruner") == "spec.method.pruner"


@pytest.mark.parametrize(
    ("statuses", "cancel", "expected"),
    [
        (["queued", "queued"], False, "queued"),
        (["succeeded", "queued"], False, "running"),
        (["running", "queued"], False, "running"),
        (["succeeded", "succeeded"], False, "succeeded"),
        (["succeeded", "failed"], False, "failed"),
        (["succeeded", "cancelled"], False, "cancelled"),
        (["succeeded", "deleted"], False, "cancelled"),
        (["failed", "cancelled"], True, "cancelled"),
        (["failed", "cancelled"], False, "failed"),
    ],
)
def test_sweep_status(statuses: list[str], cancel: bool, expected: str) -> None:
    assert sweeps.sweep_status(statuses, cancel) == expected


def test_progress_counts_ended_children() -> None:
    assert sweeps.progress(["queued", "running", "succeeded", "failed", "deleted"]) == {"done": 3, "total": 5}


def test_table_row_reads_the_results() -> None:
    r = row("job_a", 0.5, 12.0)
    assert r == {
        "job": "job_a",
        "target": 0.5,
        "pruner": "wanda",
        "preset": None,
        "status": "succeeded",
        "sparsity": 0.5,
        "perplexity": {"dense": {"pydoc": 10.0}, "sparse": {"pydoc": 12.0}},
        "hf_bytes": 100,
        "compact_bytes": 60,
    }
    pending = row("job_b", None, None, status="running")
    assert pending["sparsity"] is None and pending["perplexity"] == {"dense": {}, "sparse": {}}


def test_pareto_keeps_the_undominated_rows_by_sparsity() -> None:
    rows = [
        row("a", 0.5, 12.0),
        row("b", 0.6, 11.0),  # beats a on both axes
        row("c", 0.7, 15.0),
        row("d", 0.7, 16.0),  # same sparsity as c, worse perplexity
        row("e", 0.8, 30.0),
        row("f", 0.9, None),  # no perplexity: not a point
        row("g", None, None, status="running"),
    ]
    assert [r["job"] for r in sweeps.pareto(rows, "pydoc")] == ["b", "c", "e"]
    assert sweeps.pareto(rows, "wikitext2") == []


def test_pareto_ties_are_both_kept() -> None:
    rows = [row("a", 0.5, 12.0), row("b", 0.5, 12.0)]
    assert [r["job"] for r in sweeps.pareto(rows, "pydoc")] == ["a", "b"]


def test_best_within_is_the_sparsest_row_inside_the_budget() -> None:
    rows = [row("a", 0.5, 10.5), row("b", 0.6, 10.9), row("c", 0.7, 11.5), row("d", 0.8, 20.0)]
    assert sweeps.best_within(rows, "pydoc", 0.10)["job"] == "b"  # 10.9 <= 11.0 < 11.5
    assert sweeps.best_within(rows, "pydoc", 0.15)["job"] == "c"
    assert sweeps.best_within(rows, "pydoc", 0.01) is None
    assert sweeps.best_within(rows, "pydoc", 1.0)["job"] == "d"
    tie = [row("x", 0.6, 10.8), row("y", 0.6, 10.2)]
    assert sweeps.best_within(tie, "pydoc", 0.1)["job"] == "y"  # equal sparsity: lower perplexity
    failed = [row("z", 0.9, 10.0, status="failed")]
    assert sweeps.best_within(failed, "pydoc", 0.5) is None
