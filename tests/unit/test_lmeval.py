"""lm-evaluation-harness tasks on the in-memory model, offline: local task YAMLs over local data files."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spruce.core import lmeval
from spruce.core.arch import arch_for
from spruce.core.errors import DatasetUnavailable, SpecError
from spruce.core.evaluate import count_bytes, count_words, perplexity
from tests.tiny import tiny_model, tiny_model_dir, tiny_tokenizer

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = 10


def _mc_task(folder: Path, name: str = "spruce_tiny_mc", rows: int = QUESTIONS) -> Path:
    """A multiple-choice task over a local JSON Lines file: 'what is i plus one', three choices."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    questions = [
        {"question": f"What is {i} plus one?", "choices": [str(i + 1), str(i + 2), str(i + 7)], "label": 0}
        for i in range(rows)
    ]
    data.write_text("\n".join(json.dumps(q) for q in questions))
    yaml = folder / f"{name}.yaml"
    yaml.write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        "doc_to_target: label\n"
        "doc_to_choice: choices\n"
        "metric_list:\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return yaml


def _rolling_task(folder: Path, text: str) -> Path:
    """A perplexity task (lm-eval's loglikelihood_rolling) over one local document."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "doc.jsonl"
    data.write_text(json.dumps({"page": text}))
    yaml = folder / "spruce_doc_ppl.yaml"
    yaml.write_text(
        "task: spruce_doc_ppl\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: loglikelihood_rolling\n"
        'doc_to_text: ""\n'
        "doc_to_target: '{{page}}'\n"
        "metric_list:\n"
        "  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n"
    )
    return yaml


def test_a_local_multiple_choice_task_runs_on_the_model_in_memory(tmp_path):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pad_before = tok.pad_token
    tasks = lmeval.resolve([str(_mc_task(tmp_path / "tasks"))])
    assert tasks.names == ("spruce_tiny_mc",)

    got = lmeval.run(model, tok, tasks, batch_size=4)

    row = got.metrics["spruce_tiny_mc"]
    assert set(row) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
    assert 0.0 <= row["acc"] <= 1.0 and 0.0 <= row["acc_norm"] <= 1.0
    assert row["acc"] * QUESTIONS == pytest.approx(round(row["acc"] * QUESTIONS))  # a share of 10 answers
    assert row["acc_stderr"] is not None and row["acc_stderr"] >= 0.0
    assert got.samples == {"spruce_tiny_mc": QUESTIONS} and got.shots == {"spruce_tiny_mc": 0}
    # the model is evaluated as it is and left so; the job's tokenizer gets no pad token from lm-eval
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).device.type == "cpu"
    assert tok.pad_token == pad_before


def test_the_sparse_model_s_answers_are_its_own(tmp_path):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    tasks = lmeval.resolve([str(_mc_task(tmp_path / "tasks", rows=24))])
    dense = lmeval.run(model, tok, tasks).metrics["spruce_tiny_mc"]
    again = lmeval.run(model, tok, tasks).metrics["spruce_tiny_mc"]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(torch.rand(p.shape, generator=gen) < 0.3)  # prune 70% at random
    pruned = lmeval.run(model, tok, tasks).metrics["spruce_tiny_mc"]
    assert again == dense  # the same model answers the same way: the figures repeat
    assert (pruned["acc"], pruned["acc_norm"]) != (dense["acc"], dense["acc_norm"])


def test_a_folder_limit_and_the_report(tmp_path):
    folder = tmp_path / "suite"
    _mc_task(folder, "spruce_mc_a")
    _mc_task(folder, "spruce_mc_b")
    tasks = lmeval.resolve([str(folder)])
    assert tasks.names == ("spruce_mc_a", "spruce_mc_b")
    seen: list[tuple[int, int]] = []
    got = lmeval.run(
        tiny_model("qwen2"), tiny_tokenizer(), tasks, limit=4, on_task=lambda k, n: seen.append((k, n))
    )
    assert got.samples == {"spruce_mc_a": 4, "spruce_mc_b": 4} and seen == [(1, 2), (2, 2)]

    rep = lmeval.report(None, got, limit=4)
    assert rep["dense"] is None and rep["sparse"] == got.metrics and rep["limit"] == 4
    assert rep["samples"] == {"spruce_mc_a": 4, "spruce_mc_b": 4}
    assert rep["lm_eval"].count(".") >= 2
    json.dumps(rep)  # the report is JSON


def test_cancelled_between_tasks(tmp_path):
    from spruce.core.errors import Cancelled

    tasks = lmeval.resolve([str(_mc_task(tmp_path / "t"))])
    model = tiny_model("llama")
    with pytest.raises(Cancelled, match="spruce_tiny_mc"):
        lmeval.run(model, tiny_tokenizer(), tasks, should_stop=lambda: True)
    assert next(model.parameters()).device.type == "cpu"


def test_word_perplexity_and_bits_per_byte_are_lm_eval_s_own(tmp_path):
    """lm-eval's rolling loglikelihood of a document (one window, predicted after the EOT token)
    against core.evaluate's summed NLL of the same tokens with lm-eval's word and byte counts."""
    model, tok = tiny_model("llama"), tiny_tokenizer()
    text = " ".join(f"naïve wörd {i} of the document," for i in range(40)).strip()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) < 1000  # one lm-eval window (max_length 1024)
    stream = torch.tensor([tok.eos_token_id, *ids])
    ours = perplexity(model, arch_for(model), stream, seq_len=len(stream), max_windows=1)

    tasks = lmeval.resolve([str(_rolling_task(tmp_path / "ppl", text))])
    theirs = lmeval.run(model, tok, tasks).metrics["spruce_doc_ppl"]

    assert theirs["word_perplexity"] == pytest.approx(math.exp(ours.total_nll / count_words(text)), rel=1e-4)
    assert theirs["byte_perplexity"] == pytest.approx(math.exp(ours.total_nll / count_bytes(text)), rel=1e-4)
    assert theirs["bits_per_byte"] == pytest.approx(
        ours.total_nll / count_bytes(text) / math.log(2), rel=1e-4
    )


def test_counts_match_lm_eval_s_task_counts():
    from lm_eval.api.task import ConfigurableTask

    for text in ("a b  c\n\nd", "naïve café ", "", "  lead"):
        assert count_words(text) == ConfigurableTask.count_words(text)
        assert count_bytes(text) == ConfigurableTask.count_bytes(text)


def test_bad_entries_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(DatasetUnavailable, match="no task file") as err:
        lmeval.resolve([str(tmp_path / "missing.yaml")])
    assert err.value.param == "experimental.evaluation.tasks[0]"
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match="defines no lm-eval task") as err:
        lmeval.resolve([str(_mc_task(tmp_path / "ok")), str(tmp_path / "empty")])
    assert err.value.param == "experimental.evaluation.tasks[1]"
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SpecError, match=r"\*\.yaml"):
        lmeval.resolve([str(tmp_path / "notes.txt")])
    # a task whose data file is gone fails at once, not after the pruning
    yaml = _mc_task(tmp_path / "gone")
    (tmp_path / "gone" / "spruce_tiny_mc.jsonl").unlink()
    with pytest.raises(DatasetUnavailable, match="spruce_tiny_mc"):
        lmeval.resolve([str(yaml)])


def test_an_unknown_name_is_refused(tmp_path):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(_mc_task(tmp_path).parent), include_defaults=False)
    assert lmeval._named(manager, "spruce_tiny_mc") == ["spruce_tiny_mc"]
    assert lmeval._named(manager, "spruce_*") == ["spruce_tiny_mc"]
    assert lmeval._named(manager, "hellaswag_typo") == []


def test_without_lm_eval_a_job_naming_tasks_is_a_spec_error(monkeypatch):
    monkeypatch.setattr(lmeval.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SpecError, match=r"spruce\[eval\]") as err:
        lmeval.resolve(["hellaswag"])
    assert err.value.param == "experimental.evaluation.tasks"


def test_shape_keeps_figures_and_filters():
    raw = {
        "gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.1,
                  "exact_match,flexible-extract": 0.5, "exact_match_stderr,flexible-extract": "N/A"},
        "arc_easy": {"alias": "arc_easy", "name": "arc_easy", "sample_len": 10, "acc,none": 0.7, "acc_stderr,none": 0.05},
    }  # fmt: skip
    assert lmeval.shape(raw) == {
        "gsm8k": {"exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.1,
                  "exact_match,flexible-extract": 0.5, "exact_match_stderr,flexible-extract": None},
        "arc_easy": {"acc": 0.7, "acc_stderr": 0.05},
    }  # fmt: skip


def test_importing_the_engine_does_not_import_lm_eval():
    code = "import sys, core.compress, core.lmeval, core.evaluate; sys.exit('lm_eval' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


@pytest.mark.engine
def test_a_job_reports_word_and_byte_figures_and_its_tasks_before_and_after_pruning(tmp_path):
    from spruce.core.compress import compress
    from spruce.core.spec import CompressionSpec

    spec = CompressionSpec.from_dict(
        {
            "model": str(tiny_model_dir(tmp_path / "models", "llama")),
            "sparsity": 0.6,
            "method": {"induction": False},
            "calibration": {"source": "pydoc", "samples": 4, "seq_len": 32, "seed": 1},
            "evaluation": {"sources": ["pydoc"]},
            "experimental": {
                "evaluation": {"seq_len": 32, "max_windows": 6, "tasks": [str(_mc_task(tmp_path / "tasks"))]}
            },
        }
    )
    report = compress(spec, out_dir=tmp_path / "out")

    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    for data in (report.to_dict(), saved, report.summary):
        for model in ("dense", "sparse"):
            row = data["evaluation_metrics"][model]["pydoc"]
            assert row["token_perplexity"] == data["perplexity"][model]["pydoc"]
            assert row["tokens"] == 6 * 31 and row["words"] > 0 and row["bytes"] > row["words"]
            assert row["bits_per_byte"] == pytest.approx(row["nll"] / row["bytes"] / math.log(2))
            acc = data["tasks"][model]["spruce_tiny_mc"]["acc"]
            assert 0.0 <= acc <= 1.0
        assert data["tasks"]["samples"] == {"spruce_tiny_mc": QUESTIONS}
    # pruning changed the model: its per-byte figure moved with its perplexity
    dense, sparse = (report.to_dict()["evaluation_metrics"][m]["pydoc"] for m in ("dense", "sparse"))
    assert (sparse["bits_per_byte"] > dense["bits_per_byte"]) == (
        sparse["token_perplexity"] > dense["token_perplexity"]
    )
    # lm-eval's pad token stayed on its copy of the tokenizer
    assert (
        json.loads((tmp_path / "out" / "hf" / "tokenizer_config.json").read_text()).get("pad_token") is None
    )


@pytest.mark.parametrize(
    ("tasks", "bad"),
    [(["hellaswag", "/srv/tasks/evil.yaml"], 1), (["local.yaml"], 0), (["../up"], 0), (["a b"], 0)],
)
def test_the_service_runs_tasks_by_name_only(tmp_path, tasks, bad):
    """A path would have the worker read (and import the hooks of) a YAML on its own disk."""
    from tests.unit.service import Service

    svc = Service(tmp_path)
    body = {
        "model": "smollm2-135m",
        "sparsity": 0.5,
        "evaluation": {"sources": ["pydoc"]},
        "experimental": {"evaluation": {"tasks": tasks, "task_limit": 100}},
    }
    r = svc.client.post("/v1/jobs", json=body, headers=svc.h())
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == f"experimental.evaluation.tasks[{bad}]"
    body["experimental"]["evaluation"]["tasks"] = ["hellaswag", "arc_*", "longproc_countdown_0.5k"]
    r = svc.client.post("/v1/jobs", json=body, headers=svc.h())
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["experimental"]["evaluation"]["tasks"] == [
        "hellaswag",
        "arc_*",
        "longproc_countdown_0.5k",
    ]
