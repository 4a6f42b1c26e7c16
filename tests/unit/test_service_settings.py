"""Settings: defaults give the default mode under data_dir; SPRUCE_* variables override; lazy."""

from __future__ import annotations

from pathlib import Path

import pytest

from spruce.common.settings import Settings, get_settings

pytestmark = pytest.mark.unit


def test_defaults_live_under_data_dir(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    assert s.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'spruce.db'}"
    assert s.resolved_broker_url == "filesystem://"
    assert s.broker_folder == tmp_path.resolve() / "broker"
    assert s.resolved_artifacts_dir == tmp_path.resolve() / "artifacts"
    assert s.storage == "local"
    assert tmp_path.resolve() / "models" in s.resolved_model_roots


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPRUCE_DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("SPRUCE_BROKER_URL", "redis://h:6379/3")
    monkeypatch.setenv("SPRUCE_STORAGE", "s3")
    monkeypatch.setenv("SPRUCE_S3_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("SPRUCE_S3_SECRET_ACCESS_KEY", "hush")
    monkeypatch.setenv("SPRUCE_MODEL_ROOTS", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    monkeypatch.setenv("SPRUCE_MAX_SAMPLES", "7")
    s = Settings()
    assert s.resolved_database_url == "postgresql://u@h/db"
    assert s.resolved_broker_url == "redis://h:6379/3"
    assert s.storage == "s3" and s.s3_endpoint_url == "http://minio:9000"
    assert s.s3_secret_access_key is not None and s.s3_secret_access_key.get_secret_value() == "hush"
    assert "hush" not in repr(s)  # secrets do not leak into logs
    assert s.model_roots == [tmp_path / "a", tmp_path / "b"]
    assert s.max_samples == 7


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPRUCE_STORAGE", "ftp")
    with pytest.raises(ValueError, match="storage"):
        Settings()


def test_get_settings_is_lazy_and_cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    get_settings.cache_clear()
    monkeypatch.setenv("SPRUCE_DATA_DIR", str(tmp_path))  # set after import: still seen
    try:
        first = get_settings()
        assert first.data_dir == tmp_path
        monkeypatch.setenv("SPRUCE_DATA_DIR", str(tmp_path / "other"))
        assert get_settings() is first  # cached until cache_clear()
    finally:
        get_settings.cache_clear()
