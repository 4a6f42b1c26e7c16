"""Short-lived download links that a browser can follow without an API key.

A link is the API's own download route plus ``key``, ``expires`` and ``signature`` query
parameters: ``signature`` is HMAC-SHA256 over (job id, artifact name, key id, expiry) under the
service's signing secret. Only the API can make one, only for an artifact the key's team owns,
and it stops working when it expires or when that key is revoked. With S3 storage and presigning
on, the links are presigned S3 URLs instead (they expire, but S3 cannot know about revocation).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

from spruce.common.settings import Settings

SIGNED_PREFIX = "/v1/downloads"


def signing_key(settings: Settings) -> bytes:
    """The HMAC key: SPRUCE_SIGNING_SECRET, else a random one kept in ``<data_dir>/signing.key``.

    The file is created once (O_EXCL, mode 600) so that every process sharing the data folder
    (``spruce serve``'s API and the next restart) signs and checks with the same key.
    """
    if settings.signing_secret is not None and settings.signing_secret.get_secret_value():
        return settings.signing_secret.get_secret_value().encode("utf-8")
    path = Path(settings.data_dir).resolve() / "signing.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    value = path.read_text().strip()
    if not value:  # another process is between its create and its write
        raise RuntimeError(f"{path} is empty; set SPRUCE_SIGNING_SECRET or remove the file")
    return value.encode("utf-8")


def _message(job_id: str, name: str, key_id: str, expires: int) -> bytes:
    # Newlines cannot occur in ids or stored artifact names, so the fields cannot run together.
    return f"{job_id}\n{name}\n{key_id}\n{expires}".encode()


def signature(secret: bytes, job_id: str, name: str, key_id: str, expires: int) -> str:
    digest = hmac.new(secret, _message(job_id, name, key_id, expires), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def signed_path(secret: bytes, job_id: str, name: str, key_id: str, expires: int) -> str:
    """The path and query of a signed link (relative to the API's base URL)."""
    query = urlencode(
        {"key": key_id, "expires": expires, "signature": signature(secret, job_id, name, key_id, expires)}
    )
    return f"{SIGNED_PREFIX}/{quote(job_id)}/{quote(name)}?{query}"


@dataclass(frozen=True)
class LinkProblem:
    code: str
    message: str


def check_link(
    secret: bytes,
    job_id: str,
    name: str,
    key_id: str | None,
    expires: int | None,
    sig: str | None,
    now: float,
) -> LinkProblem | None:
    """None if the link is genuine and still valid; else why not (the route answers 403)."""
    if not key_id or expires is None or not sig:
        return LinkProblem("invalid_signature", "this link is not signed; get one from ?redirect=false")
    expected = signature(secret, job_id, name, key_id, expires)
    if not hmac.compare_digest(expected.encode("ascii"), sig.encode("utf-8", "replace")):
        return LinkProblem("invalid_signature", "the link's signature does not match")
    if now >= expires:
        return LinkProblem("link_expired", "the link has expired; ask the API for a new one")
    return None
