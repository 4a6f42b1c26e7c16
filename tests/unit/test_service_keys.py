"""API keys: stored as sha256 only, checked in constant time, revocable."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import select

from spruce.common.db import session_scope, upgrade
from spruce.common.keys import (
    KEY_PREFIX,
    authenticate,
    create_key,
    display_prefix,
    generate_secret,
    hash_secret,
    revoke,
)
from spruce.common.models import ApiKey, Team
from spruce.common.settings import Settings

pytestmark = pytest.mark.unit


@pytest.fixture()
def url(tmp_path: Path) -> str:
    url = Settings(data_dir=tmp_path).resolved_database_url
    upgrade(url)
    return url


def test_secrets_are_random_and_hashed() -> None:
    a, b = generate_secret(), generate_secret()
    assert a != b and a.startswith(KEY_PREFIX) and len(a) > 40
    assert hash_secret(a) == hashlib.sha256(a.encode()).hexdigest()
    assert display_prefix(a) == a[:12]


def test_create_stores_only_the_hash(url: str) -> None:
    with session_scope(url) as s:
        new = create_key(s, "acme", "ci")
        again = create_key(s, "acme", "laptop")  # same team, not a second team row
    with session_scope(url) as s:
        rows = s.scalars(select(ApiKey)).all()
        assert len(rows) == 2 and s.scalar(select(Team).where(Team.name == "acme")) is not None
        assert len(s.scalars(select(Team)).all()) == 1
        stored = {r.key_hash for r in rows} | {r.prefix for r in rows} | {r.name for r in rows}
        assert new.secret not in stored and again.secret not in stored
        assert hash_secret(new.secret) in stored


def test_authenticate(url: str) -> None:
    with session_scope(url) as s:
        new = create_key(s, "acme", "ci")
    with session_scope(url) as s:
        row = authenticate(s, new.secret)
        assert row is not None and row.name == "ci" and row.team.name == "acme"
        assert authenticate(s, new.secret[:-1] + ("A" if new.secret[-1] != "A" else "B")) is None
        assert authenticate(s, "") is None
        assert authenticate(s, "not-a-key") is None
        assert authenticate(s, generate_secret()) is None


def test_revoke_by_prefix_or_id(url: str) -> None:
    with session_scope(url) as s:
        a = create_key(s, "acme", "a")
        b = create_key(s, "acme", "b")
        a_prefix, b_id = a.row.prefix, b.row.id
    with session_scope(url) as s:
        assert [r.name for r in revoke(s, a_prefix)] == ["a"]
        assert [r.name for r in revoke(s, b_id)] == ["b"]
        assert revoke(s, b_id) == []  # already revoked
    with session_scope(url) as s:
        assert authenticate(s, a.secret) is None
        assert authenticate(s, b.secret) is None
