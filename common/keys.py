"""API keys: generated with 256 random bits, stored as sha256, shown once.

A plain sha256 is enough for a high-entropy secret (no dictionary to attack, unlike a password).
Lookups go by the stored display prefix and then compare hashes in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, joinedload

from spruce.common.models import ApiKey, Team, utcnow

KEY_PREFIX = "spk_"
DISPLAY_CHARS = 12  # "spk_" + 8 random characters: enough to tell keys apart in a list


@dataclass(frozen=True)
class NewKey:
    """A freshly created key: ``secret`` exists only here, the database keeps its hash."""

    secret: str
    row: ApiKey


def generate_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def display_prefix(secret: str) -> str:
    return secret[:DISPLAY_CHARS]


def create_key(session: Session, team_name: str, key_name: str = "default") -> NewKey:
    """Create a key for ``team_name`` (creating the team if new); the caller commits."""
    team = session.scalar(select(Team).where(Team.name == team_name))
    if team is None:
        team = Team(name=team_name)
        session.add(team)
        session.flush()
    secret = generate_secret()
    row = ApiKey(team_id=team.id, name=key_name, prefix=display_prefix(secret), key_hash=hash_secret(secret))
    session.add(row)
    session.flush()
    return NewKey(secret=secret, row=row)


def authenticate(session: Session, secret: str) -> ApiKey | None:
    """The active key whose hash matches ``secret``, or None (unknown, malformed or revoked)."""
    if not secret.startswith(KEY_PREFIX) or len(secret) < DISPLAY_CHARS + 8:
        return None
    digest = hash_secret(secret)
    # the team in the same query: every request names its caller's team (one round trip, not two)
    candidates = session.scalars(
        select(ApiKey).options(joinedload(ApiKey.team)).where(ApiKey.prefix == display_prefix(secret))
    ).all()
    match = None
    for row in candidates:  # almost always one; compare all so the timing does not say which
        if hmac.compare_digest(row.key_hash, digest):
            match = row
    if match is None or match.revoked_at is not None:
        return None
    return match


def revoke(session: Session, prefix_or_id: str) -> list[ApiKey]:
    """Revoke the key with this id, or every active key with this display prefix; returns them.

    The argument may also be the whole secret (a leaked key pasted as is) or the prefix as
    ``spruce keys list`` prints it, trailing dots included. Takes effect on the next request:
    keys are looked up on every request, never cached.
    """
    ref = prefix_or_id.strip().rstrip(".")
    match = [ApiKey.id == ref, ApiKey.prefix == ref]
    if ref.startswith(KEY_PREFIX) and len(ref) > DISPLAY_CHARS:
        match.append(ApiKey.key_hash == hash_secret(ref))
    rows = session.scalars(select(ApiKey).where(or_(*match), ApiKey.revoked_at.is_(None))).all()
    now = utcnow()
    for row in rows:
        row.revoked_at = now
    return list(rows)
