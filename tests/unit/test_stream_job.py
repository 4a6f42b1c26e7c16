"""Streamed compression jobs (core/stream_job.py): a job whose model does not fit in memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from spruce.core.checkpoint import LayerCheckpoint, ResumeState
from spruce.core.compress import compress
from spruce.core.stream_job import compress_streamed, stream_folder
from tests.tiny import tiny_job, tiny_model, tiny_tokenizer

pytestmark = [pytest.mark.unit, pytest.mark.engine]


def _folder(tmp_path: Path, dtype: torch.dtype) -> Path:
    out = tmp_path / f"llama-{dtype}"
    if not out.exists():
        tiny_model("llama", layers=3).to(dtype).save_pretrained(out, max_shard_size="40KB")  # several shards
        tiny_tokenizer().save_pretrained(out)
    return out


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(folder).state_dict()


@pytest.mark.parametrize(
    ("pruner", "sparsity", "dtype"), [("wanda", 0.5, torch.bfloat16), ("sparsegpt", "2:4", torch.float32)]
)
def test_a_streamed_job_writes_what_compress_writes(tmp_path, pruner, sparsity, dtype):
    folder = _folder(tmp_path, dtype)
    spec = tiny_job(folder, sparsity, {"pruner": pruner}, sequential="layer", batch_size=2)
    want = compress(spec, out_dir=tmp_path / "whole").to_dict()
    got = compress_streamed(spec, folder, out_dir=tmp_path / "streamed")

    assert len(list((tmp_path / "streamed" / "hf").glob("model-layer-*.safetensors"))) == 3  # a shard a layer
    out = _weights(tmp_path / "streamed" / "hf")
    assert next(iter(out.values())).dtype == dtype
    torch.testing.assert_close(out, _weights(tmp_path / "whole" / "hf"), rtol=1e-5, atol=1e-6)
    assert got["sparsity"] == want["sparsity"]
    assert [r["sparsity"] for r in got["layers"]] == [r["sparsity"] for r in want["layers"]]
    assert got["streamed"]["skipped"] == ["evaluate_dense", "evaluate_sparse", "compact"]
    assert json.loads((tmp_path / "streamed" / "report.json").read_text())["sizes"] == got["sizes"]


class Crash(Exception):
    pass


class MemoryCheckpoint:
    """Keeps every saved layer; ``crash_after`` ends the run by raising once that layer is saved."""

    def __init__(self, crash_after: int | None = None) -> None:
        self.states: list[LayerCheckpoint] = []
        self.crash_after = crash_after

    def load(self) -> ResumeState | None:
        if not self.states:
            return None
        return ResumeState(weights=[s.weights for s in self.states], last=self.states[-1])

    def save(self, state: LayerCheckpoint) -> None:
        weights = {k: v.detach().clone() for k, v in state.weights.items()}
        assert not any(v.is_meta for v in weights.values())  # saved before the layer is freed
        self.states.append(LayerCheckpoint(state.index, state.layers, weights, [h.clone() for h in state.hidden],
                                           state.generator.clone(), json.loads(json.dumps(state.meta))))  # fmt: skip
        if state.index == self.crash_after:
            self.crash_after = None
            raise Crash


def test_a_streamed_job_resumes_where_it_was_interrupted(tmp_path):
    folder = _folder(tmp_path, torch.float32)
    spec = tiny_job(folder, 0.5, {"pruner": "sparsegpt"}, sequential="layer", batch_size=2)
    whole = compress_streamed(spec, folder, out_dir=tmp_path / "whole")
    checkpoint = MemoryCheckpoint(crash_after=0)
    with pytest.raises(Crash):
        compress_streamed(spec, folder, out_dir=tmp_path / "resumed", checkpoint=checkpoint)
    got = compress_streamed(spec, folder, out_dir=tmp_path / "resumed", checkpoint=checkpoint)

    assert got["resume"]["from_layer"] == 1
    assert [s.index for s in checkpoint.states] == [0, 1, 2]
    torch.testing.assert_close(_weights(tmp_path / "resumed" / "hf"), _weights(tmp_path / "whole" / "hf"),
                               rtol=0, atol=0)  # fmt: skip
    assert got["sparsity"] == whole["sparsity"]


def test_which_jobs_stream(tmp_path, monkeypatch):
    folder = _folder(tmp_path, torch.float32)
    spec = tiny_job(folder, 0.5, {"pruner": "wanda"})
    monkeypatch.setenv("SPRUCE_STREAM", "")
    assert stream_folder(spec) is None  # a small model fits: loaded whole
    monkeypatch.setattr("spruce.core.stream_job._available_bytes", lambda: 1000)
    assert stream_folder(spec) == folder  # its weights exceed half the memory available
    assert (
        stream_folder(tiny_job(folder, 0.5, {"pruner": "wanda", "allocation": "owl"})) is None
    )  # reads every layer first
    monkeypatch.setenv("SPRUCE_STREAM", "0")
    assert stream_folder(spec) is None
    monkeypatch.undo()
    monkeypatch.setenv("SPRUCE_STREAM", "1")
    assert stream_folder(spec) == folder
    assert stream_folder(tiny_job(tmp_path / "nowhere", 0.5, {"pruner": "wanda"})) is None


def test_compress_streams_a_job_when_told_to(tmp_path, monkeypatch):
    folder = _folder(tmp_path, torch.bfloat16)
    monkeypatch.setenv("SPRUCE_STREAM", "1")
    report = compress(tiny_job(folder, 0.5, {"pruner": "wanda"}), out_dir=tmp_path / "out").to_dict()
    assert report["streamed"]["skipped"] == ["evaluate_dense", "evaluate_sparse", "compact"]
    assert report["sequential"] == "layer"  # ("auto": the layer walk, the one that streams)
    assert (tmp_path / "out" / "hf" / "model-layer-00002.safetensors").is_file()
    assert report["sparsity"]["overall"] == pytest.approx(0.5, abs=0.01)
