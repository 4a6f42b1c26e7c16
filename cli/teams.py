"""`spruce teams limits|show` and `spruce retention run`: fair-sharing administration, written
straight to the service database (the same settings as serve; see docs/service.md, "Fair sharing")."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

DEFAULT = "default"


def limit_value(text: str) -> int | None:
    """A limit as typed: a count >= 0 (0: no limit), or 'default' (None: follow the setting)."""
    if text == DEFAULT:
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number or 'default'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; 0 means no limit")
    return value


def register(sub: Any) -> None:
    p = sub.add_parser("teams", help="per-team limits and usage (uses the same settings as serve)")
    teams = p.add_subparsers(dest="teams_command", metavar="ACTION", required=True)

    lim = teams.add_parser(
        "limits",
        help="set a team's limits: N (0: no limit) or 'default' (the SPRUCE_TEAM_MAX_* setting)",
    )
    lim.add_argument("team", metavar="TEAM", help="team name")
    lim.add_argument("--max-queued", type=limit_value, default=argparse.SUPPRESS, metavar="N")
    lim.add_argument("--max-running", type=limit_value, default=argparse.SUPPRESS, metavar="N")
    lim.add_argument("--max-bytes", type=limit_value, default=argparse.SUPPRESS, metavar="N")
    lim.add_argument("--data-dir", type=Path, default=None)
    lim.set_defaults(func=run_limits)

    show = teams.add_parser("show", help="a team's usage against its limits")
    show.add_argument("team", metavar="TEAM", help="team name")
    show.add_argument("--json", action="store_true", help="print JSON (the shape of GET /v1/usage)")
    show.add_argument("--data-dir", type=Path, default=None)
    show.set_defaults(func=run_show)

    r = sub.add_parser("retention", help="remove deleted jobs' files and expired artifacts now")
    rs = r.add_subparsers(dest="retention_command", metavar="ACTION", required=True)
    run = rs.add_parser("run", help="one housekeeping pass (SPRUCE_RETENTION_DAYS; 0 keeps artifacts)")
    run.add_argument("--data-dir", type=Path, default=None)
    run.set_defaults(func=run_retention)


FIELDS = {"max_queued": "max_queued", "max_running": "max_running", "max_bytes": "max_stored_bytes"}


def _url(args: argparse.Namespace) -> str:
    from spruce.cli.keys import _url as url

    return url(args)


def run_limits(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from spruce.common.db import session_scope
    from spruce.common.models import Team

    changes = {column: getattr(args, name) for name, column in FIELDS.items() if hasattr(args, name)}
    if not changes:
        print("nothing to change: give --max-queued, --max-running and/or --max-bytes")
        return 2
    with session_scope(_url(args)) as session:
        team = session.scalar(select(Team).where(Team.name == args.team))
        if team is None:
            print(f"no team {args.team!r}")
            return 1
        for column, value in changes.items():
            setattr(team, column, value)
    return run_show(argparse.Namespace(team=args.team, json=False, data_dir=args.data_dir))


def team_report(team_name: str) -> dict[str, Any] | None:
    """The team's usage and limits as GET /v1/usage answers them (None: no such team)."""
    from sqlalchemy import select

    from spruce.common import quotas
    from spruce.common.db import session_scope
    from spruce.common.models import Team
    from spruce.common.settings import get_settings

    settings = get_settings()
    with session_scope(settings.resolved_database_url) as session:
        team = session.scalar(select(Team).where(Team.name == team_name))
        if team is None:
            return None
        limits, used = quotas.limits_for(team, settings), quotas.usage(session, team.id)
        overrides = {column: getattr(team, column) for column in FIELDS.values()}
    return {
        "team": team_name,
        "queued": {"used": used.queued, "limit": limits.max_queued},
        "running": {"used": used.running, "limit": limits.max_running},
        "stored_bytes": {"used": used.stored_bytes, "limit": limits.max_stored_bytes},
        "retention_days": settings.retention_days or None,
        "overrides": overrides,
    }


def run_show(args: argparse.Namespace) -> int:
    _url(args)
    report = team_report(args.team)
    if report is None:
        print(f"no team {args.team!r}")
        return 1
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"team {args.team!r}")
    for meter, column in (
        ("queued", "max_queued"),
        ("running", "max_running"),
        ("stored_bytes", "max_stored_bytes"),
    ):
        used, cap = report[meter]["used"], report[meter]["limit"]
        source = "override" if report["overrides"][column] is not None else "default"
        print(f"  {meter:<13} {used} of {cap if cap is not None else 'no limit'} ({column}, {source})")
    return 0


def run_retention(args: argparse.Namespace) -> int:
    from spruce.common.retention import housekeeping
    from spruce.common.settings import get_settings

    _url(args)
    settings = get_settings()
    done = housekeeping(settings)
    days = settings.retention_days
    print(f"deleted jobs removed: {len(done.purged)}" + "".join(f"\n  {j}" for j in done.purged))
    policy = f"older than {days} days" if days else "kept (SPRUCE_RETENTION_DAYS=0)"
    print(f"artifacts {policy}: {len(done.expired)} jobs" + "".join(f"\n  {j}" for j in done.expired))
    return 0
