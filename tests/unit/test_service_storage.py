"""Object storage: the local folder and the S3 backend against a real S3 API server (moto)."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest

from spruce.common.settings import Settings
from spruce.common.storage import (
    LocalStorage,
    S3Storage,
    StorageError,
    StorageUnavailable,
    build_storage,
    check_key,
    download_s3_uri,
)

pytestmark = pytest.mark.unit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _s3(endpoint: str, bucket: str, **kw: object) -> S3Storage:
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    client.create_bucket(Bucket=bucket)
    return S3Storage(
        bucket,
        endpoint_url=endpoint,
        access_key_id="test",
        secret_access_key="test",
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> LocalStorage | S3Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    endpoint = request.getfixturevalue("s3_endpoint")
    return _s3(endpoint, f"b-{tmp_path.name.lower().replace('_', '-')[-40:]}", prefix="pre")


def test_roundtrip(store: LocalStorage | S3Storage, tmp_path: Path) -> None:
    src = tmp_path / "w.bin"
    src.write_bytes(b"x" * 3_000_000)
    store.put_file("jobs/j1/hf/model.safetensors", src)
    store.put_stream("jobs/j1/report.json", io.BytesIO(b'{"a": 1}'))
    store.put_stream("jobs/j10/other.txt", io.BytesIO(b"no"))
    assert store.list("jobs/j1/") == ["jobs/j1/hf/model.safetensors", "jobs/j1/report.json"]
    assert store.exists("jobs/j1/report.json") and not store.exists("jobs/j1/nope")
    assert store.size("jobs/j1/hf/model.safetensors") == 3_000_000
    assert b"".join(store.open_stream("jobs/j1/report.json")) == b'{"a": 1}'
    store.download("jobs/j1/hf/model.safetensors", tmp_path / "out" / "m")
    assert (tmp_path / "out" / "m").read_bytes() == src.read_bytes()
    store.check()
    store.delete_prefix("jobs/j1/")
    assert store.list("jobs/j1/") == [] and store.list("jobs/j10/") == ["jobs/j10/other.txt"]
    with pytest.raises(StorageError):
        list(store.open_stream("jobs/j1/report.json"))


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "..", "a\\b", "./a"])
def test_keys_cannot_escape(key: str, tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        check_key(key)
    with pytest.raises(StorageError):
        LocalStorage(tmp_path).put_stream(key, io.BytesIO(b""))


def test_presigned_url_downloads_without_credentials(s3_endpoint: str) -> None:
    store = _s3(s3_endpoint, "presign")
    store.put_stream("jobs/j/report.json", io.BytesIO(b"hello"))
    url = store.presigned_url("jobs/j/report.json", "report.json")
    assert url is not None and url.startswith(s3_endpoint)
    r = httpx.get(url)
    assert r.status_code == 200 and r.content == b"hello"
    assert S3Storage("presign", endpoint_url=s3_endpoint, presign=False).presigned_url("k") is None
    assert LocalStorage(Path("/tmp")).presigned_url("k") is None


def test_unreachable_bucket_fails_check(s3_endpoint: str, tmp_path: Path) -> None:
    with pytest.raises(StorageUnavailable, match="NoSuchBucket"):
        S3Storage(
            "missing-bucket", endpoint_url=s3_endpoint, access_key_id="t", secret_access_key="t"
        ).check()
    blocked = tmp_path / "file"
    blocked.write_text("x")
    with pytest.raises(StorageUnavailable, match="cannot be created") as raised:
        LocalStorage(blocked / "sub").check()
    assert str(tmp_path) not in str(raised.value)  # no server path in what may reach a client


def test_build_storage_and_s3_uri_download(s3_endpoint: str, tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        storage="s3",
        s3_bucket="models",
        s3_endpoint_url=s3_endpoint,
        s3_access_key_id="test",
        s3_secret_access_key="test",  # type: ignore[arg-type]
    )
    store = _s3(s3_endpoint, "models")
    assert isinstance(build_storage(settings), S3Storage)
    assert isinstance(build_storage(Settings(data_dir=tmp_path)), LocalStorage)
    store.put_stream("tiny/config.json", io.BytesIO(b"{}"))
    store.put_stream("tiny/sub/w.bin", io.BytesIO(b"w"))
    store.put_stream("tinyother/x", io.BytesIO(b"not me"))
    out = download_s3_uri("s3://models/tiny", tmp_path / "m", settings)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["config.json", "sub/w.bin"]
    with pytest.raises(StorageError, match="nothing at"):
        download_s3_uri("s3://models/absent", tmp_path / "n", settings)
