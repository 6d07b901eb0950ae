"""`pushrec index rebuild` and `pushrec index publish`, and the Redis pointer every CLI
publish moves.

Workers serve the version the Redis pointer names, and the store's `current` only while
no pointer is set (`worker/firing/index_holder.py`). So a publish from the command line
moves both: first the store's `current` (through the quality gate), then the pointer, in
the Redis the settings name (`PUSHREC_REDIS_URL`, else the embedded server of the state
directory, started if need be). A publish into another store than the settings' (`--out`)
leaves the pointer alone. Redis is checked before any build: when it does not answer,
the command stops (exit 2) and nothing is published. Should it go away between the
store's flip and the pointer's, the command says so (exit 3): workers keep serving the
pointer's version until `pushrec index publish VERSION` is run again.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import redis

import indexing
from worker.cli.common import fail, load_settings, load_settings_with_redis, print_json

if TYPE_CHECKING:
    from worker.service.runtime import Runtime
    from worker.settings import Settings


def register(index_sub: Any) -> None:
    rebuild = index_sub.add_parser(
        "rebuild",
        help="the rebuild job, here: build from the interaction log in Redis, publish "
        "through the gate, move the workers' pointer (stages shown on stderr)",
    )
    rebuild.add_argument("--force", action="store_true", help="publish despite the quality gate")
    rebuild.set_defaults(handler=cmd_index_rebuild)
    publish = index_sub.add_parser(
        "publish",
        help="make an uploaded version current (quality gate) and move the workers' pointer "
        "to it (a rollback, or a publish that could not reach Redis)",
    )
    publish.add_argument("version")
    add_gate_options(publish)
    publish.set_defaults(handler=cmd_index_publish)


def add_gate_options(parser: argparse.ArgumentParser) -> None:
    """--force and --max-drop: how a publish meets the quality gate."""
    parser.add_argument("--force", action="store_true", help="publish despite the quality gate")
    parser.add_argument(
        "--max-drop",
        type=float,
        default=indexing.store.DEFAULT_MAX_DROP,
        help="gate: allowed relative recall@10 drop",
    )


@contextmanager
def workers_redis() -> Iterator[Runtime]:
    """A runtime on the Redis workers read the pointer from; exit 2 when it does not
    answer (before anything is built or published)."""
    from worker.service.runtime import Runtime

    settings, server = load_settings_with_redis()
    rt = Runtime.open(settings)
    try:
        try:
            rt.redis.ping()
        except redis.RedisError as exc:
            fail(
                f"Redis ({settings.redis_url}) does not answer: {exc}. A publish also moves "
                "the pointer workers follow there; nothing was published"
            )
        yield rt
    finally:
        rt.close()
        if server is not None:
            server.stop()


def point_or_fail(rt: Runtime, version: str) -> None:
    """Move the workers' pointer to a version just published in the store; exit 3 with
    what to do when Redis fails now."""
    from worker.firing.index_store import point_workers_at

    try:
        point_workers_at(rt.redis, rt.keys, version)
    except redis.RedisError as exc:
        fail(
            f"{version} is the store's current version, but the Redis pointer workers "
            f"follow could not be moved ({exc}); they keep serving the version it names. "
            f"Run `pushrec index publish {version}` once Redis answers",
            code=3,
        )
    print(f"workers' pointer: {version}", file=sys.stderr)


def moves_pointer(settings: Settings, out: str | None) -> bool:
    """Whether a publish into store `out` (None: the settings' store) moves the pointer."""
    return out is None or out == settings.index_store_location


def cmd_index_rebuild(args: argparse.Namespace) -> int:
    """Exit 0 published, 1 refused by the quality gate, 2 nothing to build from, 3 a
    rebuild is running already (the scheduled one, or another by hand)."""
    from worker.cli.stages import StageDisplay
    from worker.service.rebuild import READING, rebuild_index
    from worker.store.lease import LeaseHeldError

    display = StageDisplay([READING, *indexing.STAGES])
    with workers_redis() as rt:
        try:
            result = rebuild_index(
                rt.redis, rt.keys, rt.settings, rt.catalog, force=args.force, progress=display
            )
        except LeaseHeldError as exc:
            fail(f"a rebuild is running: {exc}", code=3)
        except indexing.EmptyDataError as exc:
            fail(f"nothing to build from the interaction log: {exc}")
        finally:
            display.close()
    print_json(result)
    if result["refused"]:
        print(f"pushrec: {result['refused']}", file=sys.stderr)
        return 1
    print(f"workers' pointer: {result['version']}", file=sys.stderr)
    return 0


def cmd_index_publish(args: argparse.Namespace) -> int:
    """Exit 0 published, 1 refused by the quality gate, 2 no such version, 3 Redis failed
    after the store's flip."""
    from worker.firing.index_store import open_index_store

    store = open_index_store(load_settings())
    with workers_redis() as rt:
        try:
            decision = store.publish(args.version, force=args.force, max_drop=args.max_drop)
        except indexing.QualityGateError as exc:
            print(f"pushrec: {exc}", file=sys.stderr)
            return 1
        except indexing.ArtifactError as exc:
            fail(str(exc))
        point_or_fail(rt, args.version)
    print_json(dict(decision))
    return 0
