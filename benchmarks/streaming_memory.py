"""Peak memory of a layer walk against the number of layers and the model's dtype.

Synthetic Llama models of one shape (hidden 1024, MLP 2816, 8 heads, vocab 512, bfloat16) with
4, 8 and 16 layers (``--layers``) as sharded safetensors (with only streaming modes, only the
largest is built: each smaller one is its first layers, the shards linked and the config and shard
index cut to them). Each
run is a child process that walks the model with Wanda at 50% on 64 random tokens (statistics,
scores and masks in float32; few tokens, so that the weights, not the activations, dominate) and
writes the pruned folder:

- ``stream``: core/streaming.py, the layers read from the shards when reached, written and freed;
- ``stream-dynamic``: the same with glibc's mmap threshold left dynamic (core/heap.py: what every
  run did before ``compress`` fixed it);
- ``stream-untrimmed``: the same without ``malloc_trim`` after each layer (glibc keeps freed memory);
- ``memory``: the whole model loaded (dtype auto, i.e. bfloat16), walked, saved with save_hf;
- ``memory-fp32``: the same with dtype float32 (what every run did before dtype "auto").

The model is built in a child process of its own too, and a run's peak is the child's ``VmHWM``
(/proc/self/status: the high-water mark of its own address space). Not ``getrusage``'s
``ru_maxrss``: Linux folds the parent's high-water mark into it at ``execve``, so a child started
after the parent built a 16-layer model reported that model's size whatever it did itself. Peak RSS
counts the pages of the mapped safetensors shards that were touched (``safe_open`` maps a shard
and its tensors are views of that map until copied or written). The parent samples the child's
anonymous and file-backed parts (``RssAnon`` / ``RssFile`` in /proc/PID/status, every 2 ms) and
records the largest of each; the file-backed part is printed above its value at the start, which
holds the shared libraries (from the parent, so that no thread of the benchmark's runs in the child).

It prints each run's peak RSS, then per mode and layer count the medians of ``--repeat`` runs
(the rounds go over every layer count in turn) and the least-squares slopes through those medians
of the peak RSS, the sampled anonymous peak (what would grow if something were kept per layer) and
the file-backed one, next to one layer's size: streaming's slopes should be about zero.

    .venv/bin/python -m benchmarks.streaming_memory [--layers 4 8 16] [--repeat 1] [--hidden 1024]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

MB = 1024 * 1024
INDEX = "model.safetensors.index.json"


def build(folder: Path, layers: int, hidden: int) -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tests.tiny import tiny_tokenizer

    config = LlamaConfig(
        vocab_size=512, hidden_size=hidden, intermediate_size=int(hidden * 2.75), num_hidden_layers=layers,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder, max_shard_size="200MB")
    tiny_tokenizer().save_pretrained(folder)


def _wanda_visit(arch):
    from spruce.core.arch import layer_linears
    from spruce.core.passes import collect_stats
    from spruce.core.pruners import wanda_scores

    def visit(i, layer, batches):
        stats, _ = collect_stats(layer, arch, batches, device="cpu", want_hessian=False)
        for name, lin in layer_linears(layer, arch).items():
            scores = wanda_scores(lin.weight.data, stats[name].col_norm)  # float32 [out, in]
            drop = scores.argsort(dim=1)[:, : scores.shape[1] // 2]
            lin.weight.data.scatter_(1, drop, 0)
        return None

    return visit


def _status(pid: int | str = "self") -> dict[str, int]:
    """A process's memory counters from /proc/PID/status, in bytes (empty once it has exited)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                    out[key] = int(value.split()[0]) * 1024  # kB
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def _sampled_run(cmd: list[str]) -> tuple[str, dict[str, int]]:
    """Run ``cmd``; its stdout and the largest RssAnon and RssFile seen, sampled every 2 ms from
    this process."""
    peak = {"RssAnon": 0, "RssFile": 0}
    with tempfile.TemporaryFile("w+") as stdout:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.DEVNULL, text=True)
        while proc.poll() is None:
            now = _status(proc.pid)
            for key in peak:
                peak[key] = max(peak[key], now.get(key, 0))
            time.sleep(0.002)
        if proc.returncode:
            raise subprocess.CalledProcessError(proc.returncode, cmd)
        stdout.seek(0)
        return stdout.read(), peak


def run_child(mode: str, folder: Path, out: Path) -> dict[str, float]:
    from spruce.core.arch import arch_for
    from spruce.core.export import save_hf
    from spruce.core.heap import fix_mmap_threshold
    from spruce.core.models import load_model
    from spruce.core.streaming import LayerStream, ShardReader, ShardWriter, empty_model, layer_bytes
    from spruce.core.walker import capture_inputs, walk

    ids = [torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))]
    start = _status()  # the interpreter, torch and transformers imported
    if not mode.endswith("-dynamic"):
        fix_mmap_threshold()  # as core.compress.compress does before it builds the model
    if mode == "stream-untrimmed":
        import spruce.core.streaming

        spruce.core.streaming.give_back_memory = lambda: None
    if mode.startswith("stream"):
        from transformers import AutoTokenizer

        reader = ShardReader(folder)
        model = empty_model(folder, reader)
        arch = arch_for(model)
        writer = ShardWriter(out)
        batches = capture_inputs(model, arch, ids, device="cpu")
        walk(model, arch, batches, device="cpu", visit=_wanda_visit(arch),
             layers=LayerStream(model, arch, reader, writer))  # fmt: skip
        writer.finish(model, arch, AutoTokenizer.from_pretrained(folder))
    else:
        loaded = load_model(str(folder), dtype="float32" if mode == "memory-fp32" else "auto")
        model, arch = loaded.model, loaded.arch
        batches = capture_inputs(model, arch, ids, device="cpu")
        walk(model, arch, batches, device="cpu", visit=_wanda_visit(arch))
        save_hf(model, loaded.tokenizer, out)
    return {
        "peak_mb": _status()["VmHWM"] / MB,
        "start_mb": start["VmRSS"] / MB,
        "start_file_mb": start["RssFile"] / MB,
        "layer_mb": layer_bytes(model, arch) / MB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per mode and layer count (rounds over every layer count in turn)")  # fmt: skip
    parser.add_argument("--modes", nargs="+", default=["stream", "memory", "memory-fp32"],
                        choices=["stream", "stream-dynamic", "stream-untrimmed", "memory", "memory-fp32"])  # fmt: skip
    parser.add_argument("--child", nargs=3, metavar=("MODE", "FOLDER", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--build", nargs=2, metavar=("FOLDER", "LAYERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, folder, out = args.child
        print(json.dumps(run_child(mode, Path(folder), Path(out))))
        return
    if args.build:
        build(Path(args.build[0]), int(args.build[1]), args.hidden)
        return
    runs: dict[str, dict[int, list[dict[str, float]]]] = {m: {n: [] for n in args.layers} for m in args.modes}
    layer_mb = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        # Streaming reads only the tensors the index names; a whole-model load may read a shard
        # whole, so the whole-model modes get models built at each size.
        views = all(mode.startswith("stream") for mode in args.modes)
        sizes: dict[int, float] = {}
        for n in sorted(args.layers, reverse=True):
            folder, largest = Path(tmp) / f"l{n}", Path(tmp) / f"l{max(args.layers)}"
            if views and n != max(args.layers) and (largest / INDEX).is_file():  # (sharded)
                _first_layers(largest, folder, n)
            else:  # built in a child too: this process stays small (it could not inflate a peak)
                subprocess.run([*_me(), "--build", str(folder), str(n), "--hidden", str(args.hidden)],
                               check=True, capture_output=True)  # fmt: skip
            sizes[n] = layer_mb_of(largest if (folder / INDEX).is_file() else folder) * n
        # rounds over every layer count, so that a change of the machine's load falls on all of them
        for r in range(args.repeat):
            for n in args.layers:
                for mode in args.modes:
                    out = Path(tmp) / f"out-{mode}-{n}"
                    cmd = [*_me(), "--child", mode, str(Path(tmp) / f"l{n}"), str(out)]
                    stdout, peak = _sampled_run(cmd)
                    got = json.loads(stdout.splitlines()[-1])
                    got["anon_mb"] = peak["RssAnon"] / MB
                    got["file_mb"] = peak["RssFile"] / MB - got["start_file_mb"]
                    shutil.rmtree(out, ignore_errors=True)
                    layer_mb = got["layer_mb"]
                    runs[mode][n].append(got)
                    print(f"{mode:12s} run {r + 1} layers {n:3d}  weights {sizes[n]:6.1f} MB"
                          f"  peak RSS {got['peak_mb']:7.1f} MB  (at start {got['start_mb']:6.1f};"
                          f" sampled peaks anon {got['anon_mb']:6.1f}, file-backed {got['file_mb']:+6.1f})",
                          flush=True)  # fmt: skip
    print(f"\none layer: {layer_mb:.1f} MB (bfloat16); medians of {args.repeat} run(s) per layer count")
    print(f"{'mode':16s} {'layers':>6s} {'peak RSS':>9s} {'anon':>7s} {'file':>7s}")
    for mode, by_n in runs.items():
        for n, got in by_n.items():
            print(f"{mode:16s} {n:6d} {_median(got, 'peak_mb'):9.1f} {_median(got, 'anon_mb'):7.1f}"
                  f" {_median(got, 'file_mb'):+7.1f}")  # fmt: skip
    print("\nslopes through the medians, MB per layer (and / one layer's size)")
    print(f"{'mode':16s} {'peak RSS':>17s} {'anon':>17s} {'file-backed':>17s}")
    for mode, by_n in runs.items():
        cells = []
        for key in ("peak_mb", "anon_mb", "file_mb"):
            slope = _slope([(n, _median(got, key)) for n, got in by_n.items()])
            cells.append(f"{slope:7.2f} ({slope / layer_mb:6.1%})")
        print(f"{mode:16s} " + " ".join(f"{c:>17s}" for c in cells))


def _first_layers(source: Path, folder: Path, n: int) -> None:
    """``source``'s first ``n`` decoder layers as a model of their own: its shards linked, the
    config and the shard index cut to those layers (building each model took longer than a run)."""
    folder.mkdir()
    for file in source.iterdir():
        if file.name not in ("config.json", INDEX):
            (folder / file.name).symlink_to(file)
    config = json.loads((source / "config.json").read_text())
    config["num_hidden_layers"] = n
    (folder / "config.json").write_text(json.dumps(config))
    index = json.loads((source / INDEX).read_text())
    prefix = "model.layers."
    index["weight_map"] = {
        k: v for k, v in index["weight_map"].items() if not k.startswith(prefix) or int(k.split(".")[2]) < n
    }
    (folder / INDEX).write_text(json.dumps(index))


def layer_mb_of(folder: Path) -> float:
    """One decoder layer's share of the checkpoint's bytes (the rest is embeddings and norm)."""
    config = json.loads((folder / "config.json").read_text())
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    return size / config["num_hidden_layers"] / MB


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _me() -> list[str]:
    return [sys.executable, "-m", "benchmarks.streaming_memory"]


def _slope(points: list[tuple[int, float]]) -> float:
    xs, ys = [float(x) for x, _ in points], [y for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


if __name__ == "__main__":
    main()
