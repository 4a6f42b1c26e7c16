"""Peak memory of a layer walk against the number of layers and the model's dtype.

Synthetic Llama models of one shape (hidden 1024, MLP 2816, 8 heads, vocab 512, bfloat16) with
4, 8 and 16 layers are saved as sharded safetensors; each run is a child process that walks the
model with Wanda at 50% on 64 random tokens (statistics, scores and masks in float32; few tokens,
so that the weights, not the activations, dominate) and writes the pruned folder:

- ``stream``: core/streaming.py, the layers read from the shards when reached, written and freed;
- ``stream-untrimmed``: the same without ``malloc_trim`` after each layer (glibc keeps freed memory);
- ``memory``: the whole model loaded (dtype auto, i.e. bfloat16), walked, saved with save_hf;
- ``memory-fp32``: the same with dtype float32 (what every run did before dtype "auto").

Each model is built in a child process of its own too, and a run's peak is the child's ``VmHWM``
(/proc/self/status: the high-water mark of its own address space). Not ``getrusage``'s
``ru_maxrss``: Linux folds the parent's high-water mark into it at ``execve``, so a child started
after the parent built a 16-layer model reported that model's size whatever it did itself. Peak RSS
counts the pages of the mapped safetensors shards that were touched (``safe_open`` maps a shard
and its tensors are views of that map until copied or written); a sampling thread records the
largest anonymous and file-backed parts separately (``RssAnon`` / ``RssFile``, every 2 ms; the
file-backed part is printed above its value at the start, which holds the shared libraries).

It prints each run's peak RSS, and per mode the least-squares slope of peak RSS in the number of
layers next to one layer's size: streaming's slope should be about zero.

    .venv/bin/python -m benchmarks.streaming_memory [--layers 4 8 16] [--hidden 1024]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

MB = 1024 * 1024


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


def _status() -> dict[str, int]:
    """This process's memory counters from /proc/self/status, in bytes."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024  # kB
    return out


class _Sampler(threading.Thread):
    """The largest RssAnon and RssFile seen, sampled every 2 ms (VmHWM has only their sum)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.002):
            now = _status()
            for key in self.peak:
                self.peak[key] = max(self.peak[key], now[key])


def run_child(mode: str, folder: Path, out: Path) -> dict[str, float]:
    from spruce.core.arch import arch_for
    from spruce.core.export import save_hf
    from spruce.core.models import load_model
    from spruce.core.streaming import LayerStream, ShardReader, ShardWriter, empty_model, layer_bytes
    from spruce.core.walker import capture_inputs, walk

    ids = [torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))]
    start = _status()  # the interpreter, torch and transformers imported
    sampler = _Sampler()
    sampler.start()
    if mode == "stream-untrimmed":
        import spruce.core.streaming

        spruce.core.streaming._MALLOC_TRIM = None
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
    sampler.done.set()
    sampler.join()
    return {
        "peak_mb": _status()["VmHWM"] / MB,
        "start_mb": start["VmRSS"] / MB,
        "anon_mb": sampler.peak["RssAnon"] / MB,
        "file_mb": (sampler.peak["RssFile"] - start["RssFile"]) / MB,
        "layer_mb": layer_bytes(model, arch) / MB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--modes", nargs="+", default=["stream", "memory", "memory-fp32"],
                        choices=["stream", "stream-untrimmed", "memory", "memory-fp32"])  # fmt: skip
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
    rows: dict[str, list[tuple[int, float]]] = {m: [] for m in args.modes}
    layer_mb = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.layers:
            folder = Path(tmp) / f"l{n}"
            # built in a child too: this process stays small (and so could not inflate a run's peak)
            subprocess.run([*_me(), "--build", str(folder), str(n), "--hidden", str(args.hidden)],
                           check=True, capture_output=True)  # fmt: skip
            size = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / MB
            for mode in args.modes:
                out = Path(tmp) / f"out-{mode}-{n}"
                cmd = [*_me(), "--child", mode, str(folder), str(out)]
                got = json.loads(
                    subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
                )
                layer_mb = got["layer_mb"]
                rows[mode].append((n, got["peak_mb"]))
                print(f"{mode:12s} layers {n:3d}  checkpoint {size:7.1f} MB  peak RSS {got['peak_mb']:7.1f} MB"
                      f"  (at start {got['start_mb']:6.1f}; sampled peaks anon {got['anon_mb']:6.1f},"
                      f" file-backed {got['file_mb']:+6.1f})", flush=True)  # fmt: skip
    print(f"\none layer: {layer_mb:.1f} MB (bfloat16)")
    print(f"{'mode':12s} {'slope MB/layer':>15s} {'slope / layer size':>19s}")
    for mode, points in rows.items():
        slope = _slope(points)
        print(f"{mode:12s} {slope:15.2f} {slope / layer_mb:19.1%}")


def _me() -> list[str]:
    return [sys.executable, "-m", "benchmarks.streaming_memory"]


def _slope(points: list[tuple[int, float]]) -> float:
    xs, ys = [float(x) for x, _ in points], [y for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


if __name__ == "__main__":
    main()
