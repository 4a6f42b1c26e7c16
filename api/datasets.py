"""/v1/datasets: upload a .txt or .jsonl file to use as calibration or evaluation text."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, File, Form, Response, UploadFile
from sqlalchemy import select
from sqlalchemy.orm import Session

from spruce.api.deps import CallerDep, CtxDep, SessionDep
from spruce.api.errors import COMMON, ApiError, not_found
from spruce.api.schemas import DatasetList, DatasetOut
from spruce.api.usage import quota_error
from spruce.api.validation import MAX_JSON_DEPTH, json_depth
from spruce.common import quotas
from spruce.common.models import Dataset, Job, new_id, storable
from spruce.common.states import JobStatus
from spruce.common.storage import StorageError

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=COMMON)

FORMATS = {".txt": "txt", ".jsonl": "jsonl"}
MAX_FILENAME = 200  # datasets.name defaults to the file name and holds 200 characters
CHUNK = 1 << 20


def dataset_out(ds: Dataset) -> DatasetOut:
    return DatasetOut.model_validate(
        {
            "id": ds.id,
            "name": ds.name,
            "filename": ds.filename,
            "format": ds.format,
            "size": ds.size,
            "sha256": ds.sha256,
            "records": ds.records,
            "created_at": ds.created_at,
        }
    )


def _invalid(message: str, param: str = "file") -> ApiError:
    return ApiError(422, "invalid_dataset", message, param)


def copy_limited(src: BinaryIO, dest: BinaryIO, limit: int) -> tuple[int, str]:
    """Copy at most ``limit`` bytes; returns (size, sha256). Raises 413 beyond the limit.

    (api.limits.BodyLimit already refuses a request body over the limit before it is parsed;
    this is the exact check on the file itself.)
    """
    h, size = hashlib.sha256(), 0
    while chunk := src.read(CHUNK):
        size += len(chunk)
        if size > limit:
            raise ApiError(
                413,
                "payload_too_large",
                f"the upload is larger than this service's limit of {limit // (1 << 20)} MiB (SPRUCE_MAX_UPLOAD_MB)",
                "file",
            )
        h.update(chunk)
        dest.write(chunk)
    return size, h.hexdigest()


def count_records(path: Path, fmt: str) -> int:
    """Check the text and count its records: non-empty lines (.txt) or JSON objects (.jsonl)."""
    records = 0
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if "\x00" in line:  # valid UTF-8, but text files hold no NULs: a binary file
                    raise _invalid(f"line {lineno} holds a NUL byte: this is not a text file")
                if not line.strip():
                    continue
                if fmt == "jsonl":
                    if json_depth(line) > MAX_JSON_DEPTH:
                        raise _invalid(f"line {lineno} nests deeper than {MAX_JSON_DEPTH} levels")
                    try:
                        value = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise _invalid(f"line {lineno} is not valid JSON: {exc.msg}") from exc
                    if not isinstance(value, dict):
                        raise _invalid(f"line {lineno} is not a JSON object")
                records += 1
    except UnicodeDecodeError as exc:
        raise _invalid(f"the file is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if records == 0:
        raise _invalid("the file holds no text")
    return records


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    responses={
        400: {"description": "the multipart body does not parse"},
        413: {"description": "larger than SPRUCE_MAX_UPLOAD_MB"},
    },
)
def upload_dataset(
    file: Annotated[
        UploadFile, File(description="a .txt file, or a .jsonl file with one JSON object per line")
    ],
    session: SessionDep,
    ctx: CtxDep,
    caller: CallerDep,
    # Postgres text cannot hold a NUL character: refused here (422), not at the INSERT (500).
    name: Annotated[str | None, Form(max_length=200, pattern=r"^[^\x00]*$")] = None,
) -> DatasetOut:
    filename = PurePosixPath((file.filename or "").replace("\\", "/")).name
    if len(filename) > MAX_FILENAME or any(ord(c) < 32 for c in filename):
        raise _invalid(f"the file name must be at most {MAX_FILENAME} printable characters")
    fmt = FORMATS.get(PurePosixPath(filename).suffix.lower())
    if fmt is None:
        raise _invalid(f"{filename or 'the file'!r}: only .txt and .jsonl files are accepted")
    ds_id = new_id("ds")
    with tempfile.TemporaryDirectory(prefix="spruce-upload-") as tmp:
        path = Path(tmp) / f"data.{fmt}"
        with open(path, "wb") as out:
            size, sha256 = copy_limited(file.file, out, ctx.settings.max_upload_mb << 20)
        records = count_records(path, fmt)
        check_storage(session, ctx, caller, size)
        session.commit()  # releases the team's row while the file is stored
        key = f"datasets/{caller.team_id}/{ds_id}/{ds_id}.{fmt}"
        ctx.storage.put_file(key, path)
    ds = Dataset(
        id=ds_id,
        team_id=caller.team_id,
        name=name or filename,
        filename=filename,
        format=fmt,
        size=size,
        sha256=sha256,
        records=records,
        storage_key=key,
    )
    try:
        check_storage(session, ctx, caller, size)  # again, locked: a concurrent upload may have won
        session.add(ds)
        session.commit()
    except Exception:
        # No row, no file: an upload the database never recorded must not linger in storage.
        session.rollback()
        try:
            ctx.storage.delete_prefix(f"datasets/{caller.team_id}/{ds_id}")
        except StorageError as exc:
            log.warning("could not remove the unrecorded upload %s: %s", ds_id, exc)
        raise
    return dataset_out(ds)


def check_storage(session: Session, ctx: CtxDep, caller: CallerDep, size: int) -> None:
    """403 if ``size`` more bytes pass the team's storage quota; holds the team's row locked."""
    try:
        quotas.check_upload(session, quotas.lock_team(session, caller.team_id), ctx.settings, size)
    except quotas.QuotaExceeded as exc:
        session.rollback()
        raise quota_error(exc) from exc


@router.get("", response_model=DatasetList)
def list_datasets(session: SessionDep, caller: CallerDep) -> DatasetList:
    rows = session.scalars(
        select(Dataset).where(Dataset.team_id == caller.team_id).order_by(Dataset.created_at.desc())
    ).all()
    return DatasetList(data=[dataset_out(d) for d in rows])


@router.get(
    "/{dataset_id}",
    response_model=DatasetOut,
    responses={404: {"description": "no such dataset in your team"}},
)
def read_dataset(dataset_id: str, session: SessionDep, caller: CallerDep) -> DatasetOut:
    return dataset_out(team_dataset(session, dataset_id, caller.team_id))


def team_dataset(session: Session, dataset_id: str, team_id: str) -> Dataset:
    ds = session.get(Dataset, dataset_id) if storable(dataset_id) else None
    if ds is None or ds.team_id != team_id:
        raise not_found("dataset")
    return ds


def names_dataset(spec: dict[str, Any], dataset_id: str) -> bool:
    """True if a job's spec (as submitted) reads ``dataset_id`` for calibration or evaluation."""
    calibration = spec.get("calibration") or {}
    sources = (spec.get("evaluation") or {}).get("sources") or []
    if isinstance(sources, str):
        sources = [sources]
    return calibration.get("source") == dataset_id or dataset_id in sources


@router.delete(
    "/{dataset_id}",
    status_code=204,
    response_class=Response,
    responses={
        404: {"description": "no such dataset in your team"},
        409: {"description": "a queued or running job reads it"},
    },
)
def delete_dataset(dataset_id: str, session: SessionDep, ctx: CtxDep, caller: CallerDep) -> Response:
    """Remove the dataset and its file; refused (409) while a queued or running job reads it."""
    quotas.lock_team(session, caller.team_id)  # no job of the team is submitted meanwhile
    ds = team_dataset(session, dataset_id, caller.team_id)
    active = session.scalars(
        select(Job).where(
            Job.team_id == caller.team_id, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING])
        )
    ).all()
    users = [job.id for job in active if names_dataset(job.spec, dataset_id)]
    if users:
        shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
        raise ApiError(
            409, "dataset_in_use", f"dataset {dataset_id} is read by queued or running jobs: {shown}"
        )
    ctx.storage.delete_prefix(ds.storage_key)  # first: a failure leaves the row, and a retry works
    session.delete(ds)
    session.commit()
    return Response(status_code=204)
