"""Object storage behind one interface: a local folder, or any S3-compatible server.

Keys are '/'-separated paths such as ``jobs/<id>/hf/config.json``. The API streams from
``open_stream`` or redirects to ``presigned_url``; the worker uploads with ``put_file``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, ParamSpec, Protocol, TypeVar

from spruce.common.settings import Settings

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class StorageError(Exception):
    """The store cannot be reached, or a key is missing or malformed."""


class StorageUnavailable(StorageError):
    """The store did not answer (refused, timed out, a 5xx, a full disk): worth retrying later."""


class StorageNotFound(StorageError):
    """The store answered, and has no object under that key (not a fault of the store)."""


# Where check() writes and deletes its probe object (a key of its own: nothing lists it).
PROBE_PREFIX = "_probe"


P = ParamSpec("P")
R = TypeVar("R")


class Storage(Protocol):
    def put_file(self, key: str, path: Path) -> None: ...

    def put_stream(self, key: str, stream: BinaryIO) -> None: ...

    def open_stream(self, key: str) -> Iterator[bytes]: ...

    def download(self, key: str, path: Path) -> None: ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int: ...

    def list(self, prefix: str) -> list[str]: ...

    def delete_prefix(self, prefix: str) -> None: ...

    def presigned_url(
        self, key: str, filename: str | None = None, expires_in: int | None = None
    ) -> str | None: ...

    def check(self) -> None: ...


def check_key(key: str) -> str:
    """Reject keys that could escape the store's root (absolute, '..', empty parts)."""
    if not key or "\\" in key or any(p in ("", ".", "..") for p in key.split("/")):
        raise StorageError(f"invalid storage key {key!r}")
    return key


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class LocalStorage:
    """Files under one root folder; the default mode's artifact store.

    Errors say whether the folder answered: a key with no file under a healthy root is
    ``StorageNotFound``; anything else (the root missing or replaced by a file, a folder on the
    way that is a file, permissions, a full or read-only disk) is ``StorageUnavailable``. Only
    ``exists`` and ``list`` take a missing root for an empty store (nothing stored yet): a
    request for a recorded object under a missing root is a store that is away.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _unavailable(self, what: str, exc: OSError) -> StorageUnavailable:
        # No path in the message: it reaches logs and, through callers, API answers.
        return StorageUnavailable(f"the artifact folder cannot {what}: {exc.strerror or exc}")

    def _missing(self, key: str, exc: OSError) -> StorageError:
        if isinstance(exc, FileNotFoundError) and self.root.is_dir():
            return StorageNotFound(f"no object {key!r}")
        return self._unavailable(f"read {key!r}", exc)

    def locate(self, key: str) -> Path:
        """The file behind ``key``, checked to exist (lets the API send it with sendfile)."""
        path = self._path(key)
        try:
            st = path.stat()
        except OSError as exc:
            raise self._missing(key, exc) from exc
        if not stat.S_ISREG(st.st_mode):
            raise StorageNotFound(f"no object {key!r}")
        return path

    def put_file(self, key: str, path: Path) -> None:
        with open(path, "rb") as f:
            self.put_stream(key, f)

    def put_stream(self, key: str, stream: BinaryIO) -> None:
        dest = self._path(key)
        tmp = dest.with_name(dest.name + ".part")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as out:
                shutil.copyfileobj(stream, out, CHUNK)
            tmp.replace(dest)  # readers never see half a file
        except OSError as exc:  # a full disk, a read-only or vanished mount, a file where a folder was
            with contextlib.suppress(OSError):  # the cleanup meets the same broken folder
                tmp.unlink(missing_ok=True)
            raise self._unavailable(f"store {key!r}", exc) from exc

    def open_stream(self, key: str) -> Iterator[bytes]:
        path = self.locate(key)
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed by the generator)
        except OSError as exc:
            raise self._missing(key, exc) from exc

        def chunks() -> Iterator[bytes]:
            with f:
                while chunk := f.read(CHUNK):
                    yield chunk

        return chunks()

    def download(self, key: str, path: Path) -> None:
        src = self.locate(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(src, path)
        except OSError as exc:
            raise self._missing(key, exc) from exc

    def exists(self, key: str) -> bool:
        check_key(key)  # a key that could escape the root is refused, stored or not
        if not self.root.exists():  # nothing was ever stored (a fresh data folder)
            return False
        try:
            self.locate(key)
        except StorageNotFound:
            return False
        return True

    def size(self, key: str) -> int:
        return self.locate(key).stat().st_size

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        try:
            if not base.is_dir():
                if self.root.exists() and not self.root.is_dir():
                    raise NotADirectoryError(errno.ENOTDIR, "not a folder")
                return []
            return sorted(
                p.relative_to(self.root).as_posix()
                for p in base.rglob("*")
                if p.is_file() and not p.name.endswith(".part")
            )
        except OSError as exc:
            raise self._unavailable("be listed", exc) from exc

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix.rstrip("/"))
        try:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            elif self.root.exists() and not self.root.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "not a folder")
        except OSError as exc:
            raise self._unavailable(f"delete {prefix!r}", exc) from exc

    def presigned_url(
        self, key: str, filename: str | None = None, expires_in: int | None = None
    ) -> str | None:
        return None  # the API streams local files itself

    def check(self) -> None:
        """Write and delete a probe object: the folder takes writes now."""
        key = f"{PROBE_PREFIX}/{os.getpid()}-{uuid.uuid4().hex}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._unavailable("be created", exc) from exc
        self.put_stream(key, io.BytesIO(b"probe"))
        try:
            self._path(key).unlink()
        except OSError as exc:
            raise self._unavailable("delete a probe", exc) from exc


def _s3_errors(method: Callable[P, R]) -> Callable[P, R]:
    """Sort S3 failures into "no such object" and "the store did not answer as it should".

    ``StorageNotFound``: a 404 for the key itself (NoSuchKey). Everything else is
    ``StorageUnavailable`` (the API answers 503 for it): connection failures and timeouts (after
    botocore's own retries), 5xx answers, a missing bucket, refused credentials.
    """

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return method(*args, **kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            if error.get("Code") in ("NoSuchKey", "404", "NotFound") or (
                status == 404 and error.get("Code") != "NoSuchBucket"
            ):
                raise StorageNotFound(f"no such object: {error.get('Code')}") from exc
            raise StorageUnavailable(f"object storage answered {status} {error.get('Code')}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"object storage is unreachable: {exc.__class__.__name__}") from exc

    return wrapper


class S3Storage:
    """A bucket on AWS S3 or any S3-compatible server (MinIO, moto, Ceph: set ``endpoint_url``)."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        presign: bool = True,
        presign_expiry: int = 3600,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.presign = presign
        self.presign_expiry = presign_expiry
        self._client_args: dict[str, Any] = dict(
            region_name=region, aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key
        )
        self.endpoint_url = endpoint_url
        self.public_endpoint_url = public_endpoint_url or endpoint_url
        self._clients: dict[str | None, Any] = {}
        self._probe: Any = None

    def _client(self, endpoint: str | None = None) -> Any:
        endpoint = endpoint or self.endpoint_url
        if endpoint not in self._clients:
            import boto3
            from botocore.config import Config

            # Path-style addressing works on every S3-compatible server (virtual hosts need DNS).
            config = Config(
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
            )
            self._clients[endpoint] = boto3.client(
                "s3", endpoint_url=endpoint, config=config, **self._client_args
            )
        return self._clients[endpoint]

    def _key(self, key: str) -> str:
        check_key(key.rstrip("/"))
        return f"{self.prefix}/{key}" if self.prefix else key

    @_s3_errors
    def put_file(self, key: str, path: Path) -> None:
        # upload_file switches to multipart above 8 MiB: checkpoints are many GB.
        self._client().upload_file(str(path), self.bucket, self._key(key))

    @_s3_errors
    def put_stream(self, key: str, stream: BinaryIO) -> None:
        self._client().upload_fileobj(stream, self.bucket, self._key(key))

    @_s3_errors
    def open_stream(self, key: str) -> Iterator[bytes]:
        obj = self._client().get_object(Bucket=self.bucket, Key=self._key(key))
        return iter(obj["Body"].iter_chunks(CHUNK))

    @_s3_errors
    def download(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._client().download_file(self.bucket, self._key(key), str(path))

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except StorageNotFound:
            return False
        return True

    @_s3_errors
    def size(self, key: str) -> int:
        return int(self._client().head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])

    @_s3_errors
    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix) if prefix else self.prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        out: list[str] = []
        paginator = self._client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            out.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(out)

    @_s3_errors
    def delete_prefix(self, prefix: str) -> None:
        keys = self.list(prefix)
        for i in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[i : i + 1000]]
            self._client().delete_objects(Bucket=self.bucket, Delete={"Objects": batch})

    def presigned_url(
        self, key: str, filename: str | None = None, expires_in: int | None = None
    ) -> str | None:
        """A GET URL valid for ``expires_in`` seconds (default: the presign expiry setting).

        Signing is local (no request to the server): the URL carries X-Amz-Date and
        X-Amz-Expires, and the server refuses it once that time has passed.
        """
        if not self.presign:
            return None
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        url: str = self._client(self.public_endpoint_url).generate_presigned_url(
            "get_object", Params=params, ExpiresIn=expires_in or self.presign_expiry
        )
        return url

    @_s3_errors
    def check(self) -> None:
        """Write and delete a probe object, with one quick try (readiness must answer in time)."""
        from botocore.config import Config

        if self._probe is None:
            config = Config(
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                retries={"max_attempts": 1, "mode": "standard"},
                connect_timeout=1,
                read_timeout=2,
            )
            import boto3

            self._probe = boto3.client(
                "s3", endpoint_url=self.endpoint_url, config=config, **self._client_args
            )
        key = self._key(f"{PROBE_PREFIX}/{os.getpid()}-{uuid.uuid4().hex}")
        self._probe.put_object(Bucket=self.bucket, Key=key, Body=b"probe")
        self._probe.delete_object(Bucket=self.bucket, Key=key)


def build_storage(settings: Settings) -> Storage:
    """The store the settings name."""
    if settings.storage == "s3":
        secret = settings.s3_secret_access_key
        return S3Storage(
            settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            public_endpoint_url=settings.s3_public_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=secret.get_secret_value() if secret else None,
            presign=settings.s3_presign,
            presign_expiry=settings.s3_presign_expiry,
        )
    return LocalStorage(settings.resolved_artifacts_dir)


def download_s3_uri(uri: str, dest: Path, settings: Settings) -> Path:
    """Copy ``s3://bucket/prefix`` (one object or every object under the prefix) into ``dest``.

    Uses the storage settings' endpoint and credentials, so a model in the artifact bucket (or
    any bucket those credentials can read) can be named as a job's model.
    """
    if not uri.startswith("s3://"):
        raise StorageError(f"not an s3:// URI: {uri!r}")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    prefix = prefix.strip("/")
    secret = settings.s3_secret_access_key
    store = S3Storage(
        bucket,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=secret.get_secret_value() if secret else None,
    )
    folder = f"{prefix}/" if prefix else ""
    keys = store.list(folder)
    dest.mkdir(parents=True, exist_ok=True)
    if not keys:
        if prefix and store.exists(prefix):  # a single object, e.g. a .jsonl
            store.download(prefix, dest / PurePosixPath(prefix).name)
            return dest
        raise StorageError(f"nothing at {uri}")
    for key in keys:
        rel = key[len(folder) :]
        if not rel or any(p in ("", ".", "..") for p in PurePosixPath(rel).parts):
            continue  # "folder marker" objects and keys that would escape dest
        store.download(key, dest / rel)
    return dest
