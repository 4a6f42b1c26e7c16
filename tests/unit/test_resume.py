"""Resuming ``compress`` from a checkpoint kept in real (local) object storage: a run interrupted
after layer k and continued gives bit for bit the weights and numbers of a run never interrupted;
a save cut off midway leaves the previous layer loadable; a checkpoint that does not fit is not
used. The same with a killed worker process is tests/integration/test_resume.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import pytest
import torch
from safetensors.torch import load_file

from spruce.common.storage import LocalStorage
from spruce.core.checkpoint import LayerCheckpoint
from spruce.core.compress import compress
from spruce.core.spec import CompressionSpec
from spruce.worker.checkpoint import StorageCheckpoint, fingerprint
from tests.tiny import tiny_model_dir

pytestmark = pytest.mark.unit

LAYERS = 3
TIMING_KEYS = {"measure_seconds", "induction_seconds", "seconds"}


class Crash(Exception):
    """Stands in for the worker dying right after a layer's checkpoint was written."""


class CrashingCheckpoint(StorageCheckpoint):
    def __init__(self, *args: Any, after: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.after = after

    def save(self, state: LayerCheckpoint) -> None:
        super().save(state)
        if state.index == self.after:
            raise Crash(f"killed after layer {state.index}")


def spec_for(model: Path, **method: Any) -> CompressionSpec:
    """A job: ``method`` holds the pruner, the other public method options (preset, allocation)
    and any experimental setting by name (``induction``: a dict of its settings with ``enabled``)."""
    induction = dict(method.pop("induction", {}))
    public = {k: method.pop(k) for k in ("preset", "allocation") if k in method}
    pruner = method.pop("pruner", "wanda")
    body: dict[str, Any] = {
        "model": str(model),
        "sparsity": 0.5,
        "method": {"pruner": pruner, **public, "induction": induction.pop("enabled", False)},
        "calibration": {"source": "pydoc", "samples": 6, "seq_len": 32, "seed": 3},
        "evaluation": {"sources": ["pydoc"]},
        "experimental": {
            **method,
            "induction": induction,
            "evaluation": {"seq_len": 32, "max_windows": 2},
            "batch_size": 4,  # two calibration batches, the last one smaller
        },
    }
    return CompressionSpec.from_dict(body)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "hf" / "model.safetensors")


def without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def assert_same_run(resumed: dict[str, Any], reference: dict[str, Any], out: Path, ref_out: Path) -> None:
    got, want = weights(out), weights(ref_out)
    assert got.keys() == want.keys()
    differing = [k for k in want if not torch.equal(got[k], want[k])]
    assert differing == []  # identical, not merely close
    for key in (
        "perplexity",
        "evaluation_metrics",
        "sparsity",
        "allocation",
        "factorization_retries",
        "induction",
    ):
        assert without_timings(resumed[key]) == without_timings(reference[key]), key
    assert without_timings(resumed["layers"]) == without_timings(reference["layers"])


CASES = [
    pytest.param("llama", {"pruner": "wanda"}, [1], id="llama-wanda"),
    pytest.param("opt", {"pruner": "sparsegpt", "allocation": "owl"}, [0], id="opt-sparsegpt-owl"),
    # fit_to="model" walks the dense model's activations too: they are saved and resumed as well.
    pytest.param("llama", {"pruner": "sparsegpt", "fit_to": "model"}, [1], id="llama-sparsegpt-fit-model"),
    # ... in the walk that collects every linear's statistics before pruning (method.sequential)
    pytest.param(
        "llama",
        {"pruner": "sparsegpt", "fit_to": "model", "sequential": "layer"},
        [1],
        id="llama-sparsegpt-fit-model-layer-walk",
    ),
    pytest.param("opt", {"pruner": "wanda", "sequential": "linear"}, [0], id="opt-wanda-linear-walk"),
    # Wanda's swaps fitting the dense model carry its activations too
    pytest.param("qwen2", {"pruner": "wanda", "fit_to": "model"}, [1], id="qwen2-wanda-fit-model"),
    # Induction draws from the run's generator: the resumed run must continue its stream.
    pytest.param(
        "qwen2",
        {"pruner": "magnitude", "induction": {"enabled": True, "epochs": 2, "batch_size": 2}},
        [0, 1],
        id="qwen2-magnitude-induction-twice",
    ),
    # ... trained against the dense layer on the pruned inputs: no dense activations to carry
    pytest.param(
        "llama",
        {"pruner": "wanda", "swap_rounds": 0, "induction": {"enabled": True, "targets": "layer"}},
        [1],
        id="llama-wanda-induction-layer-targets",
    ),
    # every other family: fused linears split in place, (1 + w) norms, q/k norms, sliding layers
    pytest.param(
        "phi3",
        {"pruner": "magnitude", "induction": {"enabled": True, "epochs": 2, "batch_size": 2}},
        [0, 1],
        id="phi3-magnitude-induction-twice",
    ),
    pytest.param("gemma3", {"pruner": "sparsegpt", "allocation": "owl"}, [0], id="gemma3-sparsegpt-owl"),
    pytest.param(
        "gemma2",
        {"pruner": "wanda", "induction": {"enabled": True, "epochs": 1}},
        [1],
        id="gemma2-wanda-induction",
    ),
    pytest.param(
        "gemma3_text", {"pruner": "sparsegpt", "fit_to": "model"}, [1], id="gemma3_text-sparsegpt-fit"
    ),
    pytest.param("qwen3", {"pruner": "magnitude"}, [1], id="qwen3-magnitude"),
    pytest.param("llama3", {"pruner": "wanda"}, [0], id="llama3-wanda"),
]


@pytest.mark.engine
@pytest.mark.parametrize(("arch", "method", "crashes"), CASES)
def test_resumed_run_equals_uninterrupted_run(
    tmp_path: Path, arch: str, method: dict[str, Any], crashes: list[int]
) -> None:
    model = tiny_model_dir(tmp_path / "models", arch, layers=LAYERS, hidden=64)
    spec = spec_for(model, **method)
    reference = compress(spec, out_dir=tmp_path / "ref").to_dict()
    assert reference["resume"] is None

    store = LocalStorage(tmp_path / "store")
    fp = fingerprint(spec.to_dict())
    for n, after in enumerate(crashes):
        with pytest.raises(Crash):
            compress(
                spec,
                out_dir=tmp_path / f"try{n}",
                checkpoint=CrashingCheckpoint(store, "job_1", fp, after=after),
            )
        # The checkpoint holds every finished layer and only the latest state folder.
        listed = store.list("jobs/job_1/checkpoint")
        assert [k for k in listed if "/layers/" in k] == [
            f"jobs/job_1/checkpoint/layers/{i:04d}.safetensors" for i in range(after + 1)
        ]
        assert {k.split("/")[4] for k in listed if "/state/" in k} == {f"{after:04d}"}

    loaded: list[int] = []
    checkpoint = StorageCheckpoint(store, "job_1", fp, on_resume=lambda s: loaded.append(s.next_layer))
    resumed = compress(spec, out_dir=tmp_path / "out", checkpoint=checkpoint).to_dict()

    assert loaded == [crashes[-1] + 1] and resumed["resumed"] is True and reference["resumed"] is False
    assert resumed["resume"] == {
        "from_layer": crashes[-1] + 1,
        "count": len(crashes),
        "history": [{"from_layer": k + 1} for k in crashes],
    }
    assert_same_run(resumed, reference, tmp_path / "out", tmp_path / "ref")
    assert (tmp_path / "out" / "report.json").exists()


@pytest.mark.engine
def test_checkpoint_after_the_last_layer_resumes_with_evaluation(tmp_path: Path) -> None:
    model = tiny_model_dir(tmp_path / "models", "llama", layers=2, hidden=32)
    spec = spec_for(model)
    reference = compress(spec, out_dir=tmp_path / "ref").to_dict()
    store = LocalStorage(tmp_path / "store")
    fp = fingerprint(spec.to_dict())
    with pytest.raises(Crash):
        compress(spec, checkpoint=CrashingCheckpoint(store, "j", fp, after=1))
    resumed = compress(spec, out_dir=tmp_path / "out", checkpoint=StorageCheckpoint(store, "j", fp)).to_dict()
    assert resumed["resume"]["from_layer"] == 2
    assert_same_run(resumed, reference, tmp_path / "out", tmp_path / "ref")


class HeadFails(LocalStorage):
    """A store that dies while committing layer ``at``: its files are written, its head is not."""

    def __init__(self, root: Path, at: int) -> None:
        super().__init__(root)
        self.at, self.layer = at, -1

    def put_stream(self, key: str, stream: BinaryIO) -> None:
        if key.endswith(".safetensors") and "/layers/" in key:
            self.layer = int(key.rsplit("/", 1)[1].split(".")[0])
        if key.endswith("head.json") and self.layer == self.at:
            raise OSError("connection reset")
        super().put_stream(key, stream)


@pytest.mark.engine
def test_a_save_cut_off_midway_leaves_the_previous_layer(tmp_path: Path) -> None:
    model = tiny_model_dir(tmp_path / "models", "llama", layers=LAYERS, hidden=32)
    spec = spec_for(model)
    fp = fingerprint(spec.to_dict())
    broken = HeadFails(tmp_path / "store", at=1)
    with pytest.raises(Exception, match="could not save the checkpoint of layer 1"):
        compress(spec, checkpoint=StorageCheckpoint(broken, "j", fp))
    state = StorageCheckpoint(LocalStorage(tmp_path / "store"), "j", fp).load()
    assert state is not None and state.next_layer == 1 and len(state.weights) == 1


@pytest.mark.engine
def test_a_checkpoint_that_does_not_fit_is_not_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    small = spec_for(tiny_model_dir(tmp_path / "models", "llama", layers=LAYERS, hidden=32))
    wide = spec_for(tiny_model_dir(tmp_path / "models", "llama", layers=LAYERS, hidden=64))
    store = LocalStorage(tmp_path / "store")
    with pytest.raises(Crash):
        compress(small, checkpoint=CrashingCheckpoint(store, "j", "same", after=0))
    # Another spec under the same job id: the fingerprint tells them apart.
    assert StorageCheckpoint(store, "j", "other").load() is None
    # Same fingerprint but other shapes (a bug, or a model folder changed in place): core refuses it.
    reference = compress(wide, out_dir=tmp_path / "ref").to_dict()
    report = compress(
        wide, out_dir=tmp_path / "out", checkpoint=StorageCheckpoint(store, "j", "same")
    ).to_dict()
    assert report["resume"] is None and "ignoring the checkpoint" in caplog.text
    assert_same_run(report, reference, tmp_path / "out", tmp_path / "ref")


def test_checkpoint_round_trips_exactly(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    g = torch.Generator().manual_seed(1)
    torch.randn(3, generator=g)
    state = LayerCheckpoint(
        index=0,
        layers=2,
        weights={"w": torch.randn(4, 4, dtype=torch.bfloat16)},
        hidden=[torch.randn(2, 3, 4), torch.randn(1, 3, 4)],
        generator=g.get_state(),
        meta={"rows": [{"index": 0, "rel_error": 0.1 + 0.2}], "dense_ppl": {"pydoc": 12.5}},
    )
    StorageCheckpoint(store, "j", "f").save(state)
    assert store.exists("jobs/j/checkpoint/head.json")
    loaded = StorageCheckpoint(store, "j", "f").load()
    assert loaded is not None
    assert (
        torch.equal(loaded.weights[0]["w"], state.weights["w"])
        and loaded.weights[0]["w"].dtype == torch.bfloat16
    )
    assert all(torch.equal(a, b) for a, b in zip(loaded.last.hidden, state.hidden, strict=True))
    assert loaded.last.meta == state.meta
    again = torch.Generator()
    again.set_state(loaded.last.generator)
    assert torch.equal(torch.randn(5, generator=again), torch.randn(5, generator=g))
    StorageCheckpoint(store, "j", "f").delete()
    assert store.list("jobs/j") == []


def test_storage_down_while_saving_is_a_system_fault(tmp_path: Path) -> None:
    class Down(LocalStorage):
        def put_stream(self, key: str, stream: BinaryIO) -> None:
            raise ConnectionError("bucket unreachable")

    from spruce.core.errors import SystemFault

    state = LayerCheckpoint(0, 1, {}, [], torch.Generator().get_state(), {})
    with pytest.raises(SystemFault, match="could not save the checkpoint of layer 0: bucket unreachable"):
        StorageCheckpoint(Down(tmp_path), "j", "f").save(state)
