"""The `pushrec` command: one entry point for every process and tool.

Each submodule adds its sub-commands with `register(subparsers)`; a handler takes the
parsed arguments and returns the exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from worker.cli import campaign, coupons, dead_letters, index, replay, schedule, send, serve, user

_COMMAND_MODULES: tuple[ModuleType, ...] = (
    replay,
    serve,
    schedule,
    user,
    index,
    send,
    dead_letters,
    campaign,
    coupons,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pushrec", description="Real-time push recommender for e-commerce."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
