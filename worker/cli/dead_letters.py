"""`pushrec dead-letters`: list the task calls parked after too many deliveries, and
replay one once its cause is fixed."""

from __future__ import annotations

import argparse
from typing import Any

from worker.cli.common import fail, load_settings_with_redis, print_json

__all__ = ["register"]


def register(subparsers: Any) -> None:
    dead = subparsers.add_parser(
        "dead-letters",
        help="task calls parked after PUSHREC_MAX_DELIVERIES deliveries",
        description="Without a sub-command: print the latest entries as JSON.",
    )
    dead.add_argument("--count", type=int, default=20)
    dead.set_defaults(handler=_show)
    actions = dead.add_subparsers(dest="dead_letters_command", metavar="ACTION")
    replay = actions.add_parser(
        "replay", help="send an entry's call to its queue again and remove the entry"
    )
    replay.add_argument("entry_id", metavar="ID")
    replay.set_defaults(handler=_replay)


def _show(args: argparse.Namespace) -> int:
    from worker.service.runtime import Runtime

    settings, _server = load_settings_with_redis()
    rt = Runtime.open(settings)
    try:
        print_json(
            {
                "total": rt.dead_letters.size(),
                "latest": [d.as_dict() for d in rt.dead_letters.recent(args.count)],
            }
        )
    finally:
        rt.close()
    return 0


def _replay(args: argparse.Namespace) -> int:
    from worker.service.app import create_app, queue_for
    from worker.service.runtime import Runtime

    settings, _server = load_settings_with_redis()
    rt = Runtime.open(settings)
    try:
        entry = rt.dead_letters.get(args.entry_id)
        if entry is None:
            fail(f"no dead letter {args.entry_id!r}")
        if not entry.replayable or entry.call is None:
            fail(
                f"dead letter {entry.entry_id} ({entry.task}) was kept redacted or is not "
                "JSON: it cannot be sent again as it came (a device registration must come "
                "from the app again)"
            )
        app = create_app(settings)
        try:
            result = app.send_task(
                entry.task, kwargs=entry.call["kwargs"], queue=queue_for(settings, entry.task)
            )
        finally:
            app.close()
        rt.dead_letters.remove(entry.entry_id)
        print_json({"replayed": entry.entry_id, "task": entry.task, "task_id": result.id})
    finally:
        rt.close()
    return 0
