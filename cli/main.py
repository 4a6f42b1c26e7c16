"""`spruce`: one command line for the engine (prune), the service (serve, worker, keys) and its client.

Each subcommand lives in its own module exposing ``register(subparsers)``; modules are imported
only to register their parser, and heavy imports (torch, the web stack) happen inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# module -> the subcommands it registers
_MODULES = tuple(f"spruce.cli.{name}" for name in ("prune", "serve", "keys", "teams", "client", "sweep"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spruce", description="Make large language models sparse.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency inside the module: surface it
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # httpx logs every request at INFO: noise on a command line
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
