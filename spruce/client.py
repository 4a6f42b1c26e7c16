"""The Python client of the Spruce service: ``spruce.Client(url, key)``.

Every call is one HTTP request (or a short series, for ``wait`` and ``download``). Transient
answers (connection errors, 429 and 503 with their ``Retry-After``) are retried with backoff; a
submission carries an ``Idempotency-Key``, so a retried POST finds the job it already made
instead of making a second one. Errors raise ``ApiError`` with the service's code and field.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import httpx

TERMINAL = ("succeeded", "failed", "cancelled")
_RETRY_STATUS = (429, 502, 503, 504)


class SpruceError(Exception):
    """Anything the client could not do (unreachable service, a bad download)."""


class ApiError(SpruceError):
    """The service answered with an error: ``status``, ``code``, and the field at fault (``param``)."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        where = f" [{param}]" if param else ""
        super().__init__(f"{status} {code}{where}: {message}")
        self.status, self.code, self.message, self.param = status, code, message, param


@dataclass(frozen=True)
class Job:
    """A job as the service describes it (``GET /v1/jobs/{id}``); ``raw`` keeps every field."""

    id: str
    status: str
    progress: float
    stage: str | None
    spec: dict[str, Any]
    results: dict[str, Any] | None
    error: dict[str, Any] | None
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def of(cls, data: dict[str, Any]) -> Job:
        return cls(
            id=data["id"],
            status=data["status"],
            progress=float(data.get("progress") or 0.0),
            stage=data.get("stage"),
            spec=data.get("spec") or {},
            results=data.get("results"),
            error=data.get("error"),
            raw=data,
        )

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def perplexity(self, text: str = "pydoc", which: str = "sparse") -> float | None:
        return ((self.results or {}).get("perplexity", {}).get(which) or {}).get(text)


@dataclass(frozen=True)
class Sweep:
    """A sweep (``GET /v1/sweeps/{id}``): its child jobs, progress and, when done, its table."""

    id: str
    status: str
    jobs: list[str]
    table: list[dict[str, Any]]
    pareto: list[dict[str, Any]]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def of(cls, data: dict[str, Any]) -> Sweep:
        return cls(
            id=data["id"],
            status=data["status"],
            jobs=list(data.get("jobs") or []),
            table=list(data.get("table") or []),
            pareto=list(data.get("pareto") or []),
            raw=data,
        )

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


class Client:
    """The service at ``url`` (default ``$SPRUCE_URL``), as the team whose ``key`` this is
    (default ``$SPRUCE_API_KEY``)."""

    def __init__(
        self, url: str | None = None, key: str | None = None, *, timeout: float = 60.0, retries: int = 4
    ) -> None:
        self.url = (url or os.environ.get("SPRUCE_URL") or "http://127.0.0.1:8000").rstrip("/")
        key = key or os.environ.get("SPRUCE_API_KEY")
        if not key:
            raise SpruceError(
                "no API key: pass key= or set SPRUCE_API_KEY (create one with `spruce keys create`)"
            )
        self.retries = retries
        # follow_redirects: downloads may answer 307 to a presigned S3 URL; httpx drops the
        # Authorization header when the redirect leaves this origin.
        self.http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout,
            follow_redirects=True,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- jobs -------------------------------------------------------------------------------------

    def submit(
        self, body: dict[str, Any] | None = None, /, *, idempotency_key: str | None = None, **fields: Any
    ) -> Job:
        """Submit a job: a whole job body, or its fields (``model=``, ``sparsity=``, ``method=``, ...)."""
        payload = {**(body or {}), **fields}
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        return Job.of(self.request("POST", "/v1/jobs", json=payload, headers=headers))

    def get(self, job_id: str) -> Job:
        return Job.of(self.request("GET", f"/v1/jobs/{job_id}"))

    def cancel(self, job_id: str) -> Job:
        return Job.of(self.request("POST", f"/v1/jobs/{job_id}/cancel"))

    def delete(self, job_id: str) -> None:
        """Delete a job, its artifacts and checkpoints (a running job is cancelled first)."""
        self.request("DELETE", f"/v1/jobs/{job_id}")

    def jobs(self, status: str | None = None, page_size: int = 50) -> Iterator[Job]:
        """Every job of the team, newest first, fetched page by page as the iterator advances."""
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if status:
                params["status"] = status
            if after:
                params["after"] = after
            page = self.request("GET", "/v1/jobs", params=params)
            for item in page["data"]:
                yield Job.of(item)
            if not page.get("has_more") or not page["data"]:
                return
            after = page["data"][-1]["id"]

    def wait(
        self,
        job_id: str,
        *,
        on_progress: Callable[[Job], None] | None = None,
        interval: float = 1.0,
        timeout: float | None = None,
    ) -> Job:
        """Poll until the job ends; ``on_progress`` sees every poll. Returns the final job."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if on_progress is not None:
                on_progress(job)
            if job.done:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise SpruceError(f"job {job_id} still {job.status} after {timeout:.0f} s")
            time.sleep(interval)

    def download(self, job_id: str, out: Path | str, *, only: str | None = None) -> list[Path]:
        """Download the job's artifacts under ``out`` (each checked against its sha256)."""
        listing = self.request("GET", f"/v1/jobs/{job_id}/artifacts")
        written = []
        for art in listing["data"]:
            if only and not art["name"].startswith(only):
                continue
            dest = Path(out).joinpath(*PurePosixPath(art["name"]).parts)
            self.fetch(art["url"], dest, art["sha256"])
            written.append(dest)
        return written

    def upload(self, path: Path | str, name: str | None = None) -> str:
        """Upload a text file as a dataset of the team; returns its ``ds_...`` id."""
        path = Path(path)
        with path.open("rb") as f:
            data = {"name": name} if name else {}
            return str(self.request("POST", "/v1/datasets", files={"file": (path.name, f)}, data=data)["id"])

    def usage(self) -> dict[str, Any]:
        """The team's usage against its limits (queued and running jobs, stored bytes)."""
        return dict(self.request("GET", "/v1/usage"))

    # -- sweeps -----------------------------------------------------------------------------------

    def sweep(
        self,
        spec: dict[str, Any],
        targets: list[str | float],
        *,
        pruners: list[str] | None = None,
        presets: list[str] | None = None,
        idempotency_key: str | None = None,
    ) -> Sweep:
        """One job per target (x pruner x preset) on one calibration set; see ``wait_sweep``."""
        body: dict[str, Any] = {"spec": spec, "targets": targets}
        if pruners:
            body["pruners"] = pruners
        if presets:
            body["presets"] = presets
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        return Sweep.of(self.request("POST", "/v1/sweeps", json=body, headers=headers))

    def get_sweep(self, sweep_id: str) -> Sweep:
        return Sweep.of(self.request("GET", f"/v1/sweeps/{sweep_id}"))

    def delete_sweep(self, sweep_id: str) -> None:
        """Delete a sweep and every child job, as ``delete`` deletes one (running ones are stopped)."""
        self.request("DELETE", f"/v1/sweeps/{sweep_id}")

    def wait_sweep(
        self, sweep_id: str, *, on_progress: Callable[[Sweep], None] | None = None, interval: float = 2.0
    ) -> Sweep:
        while True:
            sweep = self.get_sweep(sweep_id)
            if on_progress is not None:
                on_progress(sweep)
            if sweep.done:
                return sweep
            time.sleep(interval)

    # -- transport --------------------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API call with retries of transient answers; the decoded JSON (None for 204)."""
        for attempt in range(self.retries + 1):
            try:
                r = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise SpruceError(f"cannot reach {self.url}: {exc}") from exc
                time.sleep(_backoff(attempt, None))
                continue
            if r.status_code in _RETRY_STATUS and attempt < self.retries:
                time.sleep(_backoff(attempt, r.headers.get("Retry-After")))
                continue
            return _decoded(r)
        raise AssertionError("unreachable")  # the loop returns or raises on its last attempt

    def fetch(self, url: str, dest: Path, sha256: str) -> None:
        """Stream ``url`` to ``dest`` through a ``.part`` file, checking its sha256 before the rename."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        digest = hashlib.sha256()
        try:
            with self.http.stream("GET", url) as r:
                if r.status_code >= 400:
                    r.read()
                    _decoded(r)
                with open(tmp, "wb") as f:
                    for chunk in r.iter_bytes(1 << 20):
                        digest.update(chunk)
                        f.write(chunk)
        except httpx.HTTPError as exc:
            raise SpruceError(f"download of {url} failed: {exc}") from exc
        if digest.hexdigest() != sha256:
            tmp.unlink(missing_ok=True)
            raise SpruceError(f"{dest}: sha256 mismatch (got {digest.hexdigest()}, expected {sha256})")
        tmp.replace(dest)


def _decoded(r: httpx.Response) -> Any:
    if r.status_code < 400:
        return None if r.status_code == 204 or not r.content else r.json()
    try:
        err = r.json()["error"]
        raise ApiError(r.status_code, err["code"], err["message"], err.get("param"))
    except (ValueError, KeyError, TypeError):
        raise ApiError(r.status_code, "http_error", r.text[:500]) from None


def _backoff(attempt: int, retry_after: str | None) -> float:
    """The server's ``Retry-After`` (seconds) where given, else 0.5 s doubling, at most 30 s."""
    if retry_after is not None:
        try:
            return min(30.0, max(0.0, float(retry_after)))
        except ValueError:
            pass
    return min(30.0, 0.5 * 2**attempt)
