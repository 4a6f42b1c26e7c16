"""`spruce keys create|revoke|list`: API keys, written straight to the service database."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("keys", help="create, list and revoke API keys (uses the same settings as serve)")
    keys = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    c = keys.add_parser("create", help="create a key; it is printed once, alone on the last line")
    c.add_argument("--team", required=True, help="team name (created if new)")
    c.add_argument("--name", default="default", help="a name for the key (shown as submitted_by)")
    c.add_argument("--data-dir", type=Path, default=None)
    c.set_defaults(func=run_create)

    r = keys.add_parser("revoke", help="revoke a key by its id or its display prefix")
    r.add_argument("key", metavar="PREFIX_OR_ID")
    r.add_argument("--data-dir", type=Path, default=None)
    r.set_defaults(func=run_revoke)

    ls = keys.add_parser("list", help="list keys (prefixes only; secrets are never stored)")
    ls.add_argument("--team", default=None)
    ls.add_argument("--data-dir", type=Path, default=None)
    ls.set_defaults(func=run_list)


def _url(args: argparse.Namespace) -> str:
    from spruce.cli.serve import use_data_dir
    from spruce.common.db import upgrade
    from spruce.common.settings import get_settings

    use_data_dir(args.data_dir)
    url = get_settings().resolved_database_url
    upgrade(url)  # idempotent; lets `keys create` run before the first `serve`
    return url


def run_create(args: argparse.Namespace) -> int:
    from spruce.common.db import session_scope
    from spruce.common.keys import create_key

    with session_scope(_url(args)) as session:
        new = create_key(session, args.team, args.name)
        key_id, prefix = new.row.id, new.row.prefix
    print(f"created key {key_id} ({prefix}...) for team {args.team!r}; it is shown only once:")
    print(new.secret)
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    from spruce.common.db import session_scope
    from spruce.common.keys import revoke

    with session_scope(_url(args)) as session:
        rows = revoke(session, args.key)
        ids = [f"{r.id} ({r.prefix}..., {r.name})" for r in rows]
    if not ids:
        print(f"no active key with id or prefix {args.key!r}")
        return 1
    print("revoked: " + ", ".join(ids))
    return 0


def run_list(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from spruce.common.db import session_scope
    from spruce.common.models import ApiKey, Team

    with session_scope(_url(args)) as session:
        stmt = select(ApiKey, Team.name).join(Team).order_by(Team.name, ApiKey.created_at)
        if args.team:
            stmt = stmt.where(Team.name == args.team)
        for key, team in session.execute(stmt).all():
            state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
            print(f"{key.id}  {key.prefix}...  team={team}  name={key.name}  {state}")
    return 0
