"""The HTTP client: `spruce submit|jobs|status|cancel|download|upload`.

Reads the service URL and key from --url/--key or SPRUCE_URL / SPRUCE_API_KEY.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from spruce.client import TERMINAL, Client
from spruce.client import SpruceError as ClientError
from spruce.core.spec import ALLOCATIONS, PRUNERS, CompressionSpec  # torch-free: what the API accepts


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, help="service URL (default $SPRUCE_URL or http://127.0.0.1:8000)")
    p.add_argument("--key", default=None, help="API key (default $SPRUCE_API_KEY)")


def register(sub: Any) -> None:
    s = sub.add_parser("submit", help="submit a compression job", description="Submit a job; prints its id.")
    _common(s)
    s.add_argument("--file", type=Path, help="a job.json body (flags below override its fields)")
    s.add_argument("--model")
    s.add_argument("--sparsity", help="a ratio such as 0.5, or N:M such as 2:4")
    s.add_argument("--method", dest="pruner", choices=PRUNERS)
    s.add_argument("--allocation", choices=ALLOCATIONS)
    s.add_argument(
        "--induction", action=argparse.BooleanOptionalAction, default=None, help="Sparsity Induction"
    )
    s.add_argument("--calib", help="calibration source: pydoc, wikitext2, c4 or an uploaded ds_... id")
    s.add_argument("--samples", type=int)
    s.add_argument("--seq-len", type=int)
    s.add_argument("--seed", type=int)
    s.add_argument("--eval", action="append", help="evaluation source (repeat for several)")
    s.add_argument("--wait", action="store_true", help="follow the job until it ends")
    s.add_argument("--json", action="store_true", help="print the created job as JSON instead of its id")
    s.set_defaults(func=run_submit)

    j = sub.add_parser("jobs", help="list your team's jobs")
    _common(j)
    j.add_argument("--status", choices=("queued", "running", "succeeded", "failed", "cancelled"))
    j.add_argument("--limit", type=int, default=20)
    j.add_argument("--json", action="store_true")
    j.set_defaults(func=run_jobs)

    st = sub.add_parser("status", help="show a job; follows it with a progress bar until it ends")
    _common(st)
    st.add_argument("job_id", metavar="ID")
    st.add_argument("--no-wait", action="store_true", help="print the job once and exit")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=run_status)

    c = sub.add_parser("cancel", help="cancel a job (immediate if queued, between layers if running)")
    _common(c)
    c.add_argument("job_id", metavar="ID")
    c.set_defaults(func=run_cancel)

    rm = sub.add_parser("delete", help="delete a job: stops it if running, removes its artifacts and row")
    _common(rm)
    rm.add_argument("job_id", metavar="ID")
    rm.set_defaults(func=run_delete)

    d = sub.add_parser("download", help="download a job's artifacts (checked against their sha256)")
    _common(d)
    d.add_argument("job_id", metavar="ID")
    d.add_argument("--out", type=Path, default=None, help="folder (default ./<ID>)")
    d.add_argument("--only", default=None, help="only artifacts whose name starts with this (e.g. hf/)")
    d.set_defaults(func=run_download)

    u = sub.add_parser("upload", help="upload a .txt or .jsonl file as a dataset; prints its ds_ id")
    _common(u)
    u.add_argument("file", type=Path)
    u.add_argument("--name", default=None)
    u.set_defaults(func=run_upload)


# -- HTTP: the SDK's client (spruce.Client) ------------------------------------------------------------


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, args.key)


def _fail(exc: ClientError) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 2


# -- submit -------------------------------------------------------------------------------------------


def _number(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value  # "2:4"


def build_body(args: argparse.Namespace) -> dict[str, Any]:
    """The job body from --file and the flags (a flag wins over the file's field)."""
    body: dict[str, Any] = json.loads(args.file.read_text()) if args.file else {}
    if args.model:
        body["model"] = args.model
    if args.sparsity:
        body["sparsity"] = _number(args.sparsity)
    method = body.setdefault("method", {})
    if args.pruner:
        method["pruner"] = args.pruner
    if args.allocation:
        method["allocation"] = args.allocation
    if args.induction is not None:
        method["induction"] = args.induction  # a bool; its settings sit under experimental.induction
    cal = body.setdefault("calibration", {})
    for key, value in (
        ("source", args.calib),
        ("samples", args.samples),
        ("seq_len", args.seq_len),
        ("seed", args.seed),
    ):
        if value is not None:
            cal[key] = value
    if args.eval:
        body.setdefault("evaluation", {})["sources"] = args.eval
    for section in ("method", "calibration"):
        if not body[section]:
            del body[section]
    if "model" not in body or "sparsity" not in body:
        raise ClientError("--model and --sparsity are required (or give them in --file)")
    return body


def run_submit(args: argparse.Namespace) -> int:
    try:
        client = _client(args)
        job = client.submit(build_body(args)).raw
    except ClientError as exc:
        return _fail(exc)
    print(json.dumps(job, indent=2) if args.json else job["id"])
    if args.wait:
        return follow(client, job["id"])
    return 0


# -- jobs / status / cancel ---------------------------------------------------------------------------


def run_jobs(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.status:
        params["status"] = args.status
    try:
        page = _client(args).request("GET", "/v1/jobs", params=params)
    except ClientError as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    for job in page["data"]:
        spec = job["spec"]
        pruner = spec.get("method", {}).get("pruner", CompressionSpec.pruner)
        print(
            f"{job['id']}  {job['status']:<9}  {job['progress'] * 100:5.1f}%  {job['created_at'][:19]}  "
            f"{spec['model']}  {spec['sparsity']}  {pruner}"
        )
    return 0


def bar(fraction: float, width: int = 30) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def describe(job: dict[str, Any]) -> str:
    parts = [f"{job['id']} {job['status']}", f"{bar(job['progress'])} {job['progress'] * 100:5.1f}%"]
    if job.get("stage"):
        layer = f" layer {job['layer']}/{job['layers']}" if job.get("layer") and job.get("layers") else ""
        parts.append(f"{job['stage']}{layer}")
    if job.get("eta_seconds") is not None and job["status"] == "running":
        parts.append(f"eta {job['eta_seconds']}s")
    return "  ".join(parts)


def summary(job: dict[str, Any]) -> str:
    lines = [describe(job)]
    if job.get("error"):
        lines.append(f"error: {job['error']['code']}: {job['error']['message']}")
    ppl = (job.get("results") or {}).get("perplexity") or {}
    for kind in ("dense", "sparse"):
        for src, value in (ppl.get(kind) or {}).items():
            lines.append(f"perplexity {kind:<6} {src}: {value:.3f}")
    return "\n".join(lines)


def follow(client: Client, job_id: str, interval: float = 1.0) -> int:
    """Redraw the job's progress until it ends; exit code 0 only if it succeeded."""
    tty = sys.stdout.isatty()
    last = ""
    while True:
        job = client.request("GET", f"/v1/jobs/{job_id}")
        line = describe(job)
        if tty:
            sys.stdout.write("\r\033[K" + line)
            sys.stdout.flush()
        elif line != last:
            print(line, flush=True)
        last = line
        if job["status"] in TERMINAL:
            if tty:
                sys.stdout.write("\n")
            details = summary(job).splitlines()[1:]  # the first line is the progress line above
            if details:
                print("\n".join(details), flush=True)
            return 0 if job["status"] == "succeeded" else 1
        time.sleep(interval)


def run_status(args: argparse.Namespace) -> int:
    try:
        client = _client(args)
        if args.no_wait or args.json:
            job = client.request("GET", f"/v1/jobs/{args.job_id}")
            print(json.dumps(job, indent=2) if args.json else summary(job))
            return 0
        return follow(client, args.job_id)
    except ClientError as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        return 130


def run_cancel(args: argparse.Namespace) -> int:
    try:
        job = _client(args).request("POST", f"/v1/jobs/{args.job_id}/cancel")
    except ClientError as exc:
        return _fail(exc)
    note = " (stops at the next layer)" if job["status"] == "running" else ""
    print(f"{job['id']} {job['status']}{note}")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    try:
        _client(args).request("DELETE", f"/v1/jobs/{args.job_id}")
    except ClientError as exc:
        return _fail(exc)
    print(f"{args.job_id} deleted")
    return 0


# -- download / upload --------------------------------------------------------------------------------


def run_download(args: argparse.Namespace) -> int:
    try:
        client = _client(args)
        for dest in client.download(args.job_id, args.out or Path(args.job_id), only=args.only):
            print(f"{dest}  {dest.stat().st_size} bytes")
    except ClientError as exc:
        return _fail(exc)
    return 0


def run_upload(args: argparse.Namespace) -> int:
    try:
        ds_id = _client(args).upload(args.file, args.name)
    except (ClientError, OSError) as exc:
        return _fail(exc if isinstance(exc, ClientError) else ClientError(str(exc)))
    print(ds_id)
    return 0
