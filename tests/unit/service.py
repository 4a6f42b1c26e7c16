"""An in-process API on a fresh SQLite database and file broker, for the API's unit tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from spruce.api.app import create_app
from spruce.common.db import session_scope, upgrade
from spruce.common.keys import create_key
from spruce.common.settings import Settings


class Service:
    """Two teams with a key each (``acme`` is the caller by default, ``rival`` the other team)."""

    def __init__(self, tmp: Path, **overrides: Any) -> None:
        self.settings = Settings(data_dir=tmp, **overrides)
        self.url = self.settings.resolved_database_url
        upgrade(self.url)
        with session_scope(self.url) as s:
            self.keys = {
                "acme": create_key(s, "acme", "ci").secret,
                "rival": create_key(s, "rival", "theirs").secret,
            }
        self.key, self.other = self.keys["acme"], self.keys["rival"]
        self.client = TestClient(create_app(self.settings))

    def h(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def count(self, model: type[Any]) -> int:
        with session_scope(self.url) as s:
            return int(s.scalar(select(func.count()).select_from(model)) or 0)

    def queued_messages(self) -> int:
        """Messages waiting in the file broker (no worker runs in these tests)."""
        return len(list((self.settings.broker_folder / "queue").glob("*.msg")))


def with_field(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``body`` with the dotted ``path`` set to ``value``."""
    out: dict[str, Any] = copy.deepcopy(body)
    *parents, leaf = path.split(".")
    node = out
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return out
