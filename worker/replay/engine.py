"""One replay, start to end: read the history, start the stack, load the past into the
shop's state and index, play the rest at the simulated clock, collect what happened.

Time: the history's dates are moved forward by whole weeks (weekdays and times of day
keep their meaning, for quiet hours) so the replay starts after the wall clock's now; the
processes share a `SimulatedClock` that runs `speed` times faster than the wall clock
from there. Events are sent when the clock reaches them (`pushrec.track_batch`, as a
shop's backend would), and every figure is shown in the history's own dates.

Events before `replay_from` are the past: applied straight to Redis (state only, no rule
fires on them) and used to build the index the workers serve. The rest is replayed, then
the clock runs on past the last event long enough for the rules' delays to come due
(`tail_s`, bounded by the time budget).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import logging
import math
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

import indexing
from indexing.events import open_text
from worker import contract
from worker.client import PushrecClient
from worker.clock import ClockFile, SimulatedClock
from worker.replay.shoppers import SyntheticShopper, synthetic_shopper
from worker.replay.stack import Stack, StackSpec, running_stack
from worker.service import ingest, task_ledger
from worker.service.runtime import Runtime
from worker.service.scheduler import drain_due
from worker.settings import Settings

log = logging.getLogger(__name__)

WEEK_S = 7 * 86_400
_SEND_CHUNK = 200  # events per track_batch call
_START_ALLOWANCE_S = 12.0  # wall-clock seconds for the workers to start before the clock runs
# As fast as possible: each step sends at most this many events, spanning at most this
# many simulated seconds (what they are decided late by at most), then waits for the
# workers to drain them before the clock moves on. A delayed job comes due in the step
# that reaches its time, at most `_JOB_SLACK_S` late: jobs due close together (and the
# events around them) share a step rather than stopping the clock one by one.
_STEP_EVENTS = 1000
_STEP_S = 900.0
_JOB_SLACK_S = 300.0
_STALLED_S = 5.0  # how long a task may be counted as running with nothing queued or unacked


@dataclass(frozen=True)
class ReplayPlan:
    """What to replay and how fast. `speed`: simulated seconds per wall-clock second;
    without it, `events_per_s` sets the pace, else the replayed span fits `budget_s`;
    `as_fast_as_possible`: the clock moves on each time the workers have drained what
    it brought due (`_feed_fast`)."""

    events: Path
    config: Path  # the TOML every process reads (`config.write_config`)
    run_dir: Path
    items: Path | None = None
    shoppers: Path | None = None  # user_id,country (the sample's): time zones
    replay_from: float | None = None  # default: the last third of the history's span
    max_events: int | None = None
    speed: float | None = None
    budget_s: float = 180.0
    tail_s: float = 86_400.0
    extra_env: dict[str, str] = field(default_factory=dict)
    redis_url: str | None = None
    events_per_s: float | None = None  # without `speed`: pace events at this rate
    as_fast_as_possible: bool = False


@dataclass
class Row:
    event: dict[str, Any]
    ts: float  # history time


@dataclass
class Progress:
    """What the progress line shows; updated by the feed loop."""

    sent: int = 0
    total: int = 0
    started: float = 0.0
    last_line: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)


@dataclass
class ReplayRun:
    """What a replay did: the inputs' account, the clock, when each event went out (wall
    clock), the synthetic shoppers, and the stack's Redis (read by `results.collect`)."""

    plan: ReplayPlan
    clock: SimulatedClock
    shift_s: float
    history_span: tuple[float, float]
    replay_span: tuple[float, float]
    account: dict[str, Any]
    shoppers: dict[str, SyntheticShopper]
    sent_at: dict[str, float]  # event id -> wall-clock time it was sent
    replayed: dict[str, dict[str, Any]]  # event id -> the event, at its history time
    index: dict[str, Any]
    wall_s: float = 0.0
    interrupted: bool = False
    stack_pids: list[int] = field(default_factory=list)
    steps: list[SimulatedClock] = field(default_factory=list)  # as fast as possible: each step

    def real_at(self, simulated: float) -> float:
        """The wall-clock time at which the clock showed `simulated`."""
        clock = self.clock
        for step in self.steps:  # in time order
            if step.origin > simulated:
                break
            clock = step
        return clock.real_at(simulated)

    def now(self) -> float:
        """The simulated time now."""
        return (self.steps[-1] if self.steps else self.clock).now()


def read_history(path: Path) -> tuple[list[Row], dict[str, Any]]:
    """Every row of the canonical events CSV, accounted for: rows whose time does not
    parse cannot be scheduled and are rejected here (`bad_ts`); the rest go to the
    workers, which accept, de-duplicate or reject each with a reason, as in production."""
    rows: list[Row] = []
    account: dict[str, Any] = {"rows": 0, "rejected_before_sending": {}}
    bad: dict[str, int] = account["rejected_before_sending"]
    with open_text(path) as fh:
        for raw in csv.DictReader(fh):
            account["rows"] += 1
            try:
                ts = indexing.parse_ts(raw.get("ts") or "")
            except ValueError:
                bad["bad_ts"] = bad.get("bad_ts", 0) + 1
                continue
            event: dict[str, Any] = {k: v for k, v in raw.items() if v not in ("", None) and k}
            for name, cast in (("quantity", int), ("price", float)):
                if name in event:
                    # left as text when it does not parse: the worker rejects it, saying why
                    with contextlib.suppress(ValueError):
                        event[name] = cast(float(event[name]) if cast is int else event[name])
            rows.append(Row(event, ts))
    rows.sort(key=lambda r: r.ts)
    return rows, account


def _countries(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    with open_text(path) as fh:
        return {row["user_id"]: row.get("country", "") for row in csv.DictReader(fh)}


def _catalog(path: Path | None, history: list[Row], shift_s: float) -> list[dict[str, Any]]:
    """The items to upsert: the items CSV (stock 100), else the items the history names."""
    now = history[0].ts + shift_s if history else 0.0
    if path is None:
        ids = sorted({str(r.event.get("item_id")) for r in history if r.event.get("item_id")})
        return [{"item_id": i, "stock": 100, "ts": now} for i in ids]
    items = []
    with open_text(path) as fh:
        for row in csv.DictReader(fh):
            item: dict[str, Any] = {"item_id": row["item_id"], "stock": 100, "ts": now}
            for name in ("title", "category", "brand", "url", "image"):
                if row.get(name):
                    item[name] = row[name]
            if row.get("price"):
                item["price"] = float(row["price"])
            items.append(item)
    return items


def _shifted(event: dict[str, Any], ts: float, shift_s: float) -> dict[str, Any]:
    return {**event, "ts": ts + shift_s}


def _build_index(past: list[Row], store: Path) -> dict[str, Any]:
    rows = [{**r.event, "ts": r.ts} for r in past]
    try:
        log_, report = indexing.read_events(rows)
        built = indexing.build_version(log_, store, publish_it=True, force=True)
    except indexing.IndexingError as exc:
        return {"error": str(exc)}
    return {"version": built.version, **built.counts, "input": report.as_dict()}


def _metric_total(counters: dict[str, int], prefix: str, suffix: str = "") -> int:
    return sum(v for k, v in counters.items() if k.startswith(prefix) and k.endswith(suffix))


def progress_line(run: ReplayRun, progress: Progress, rt: Runtime) -> str:
    now_sim = run.now() - run.shift_s
    counters = rt.metrics.snapshot()
    wall = max(1e-6, time.time() - progress.started)
    delivered = _metric_total(counters, "messages.", ".delivered")
    decisions = _metric_total(counters, "decisions.")
    progress.counters = counters
    span = run.replay_span
    share = min(1.0, max(0.0, (now_sim - span[0]) / max(1.0, span[1] - span[0])))
    bar = "#" * int(share * 24) + "-" * (24 - int(share * 24))
    date = time.strftime("%Y-%m-%d %H:%M", time.gmtime(now_sim))
    return (
        f"[{bar}] {date} | {progress.sent:,}/{progress.total:,} events "
        f"{progress.sent / wall:,.0f}/s | {decisions:,} decisions | "
        f"{delivered:,} pushes {delivered / wall:,.1f}/s"
    )


def _show(line: str, final: bool = False) -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r" + line[:160].ljust(160) + ("\n" if final else ""))
    else:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()


def replay(
    plan: ReplayPlan,
    on_stack: Callable[[Stack], None] | None = None,
    collect: Callable[[ReplayRun, Runtime], Any] | None = None,
) -> tuple[ReplayRun, Any]:
    """Run `plan` end to end; `collect(run, runtime)` reads the results while the stack
    still runs (its Redis). A KeyboardInterrupt stops the feed: what was replayed is still
    collected, then every process is stopped."""
    started = time.time()
    rows, account = read_history(plan.events)
    if not rows:
        raise ValueError(f"{plan.events}: no event with a usable time")
    first, last = rows[0].ts, rows[-1].ts
    replay_from = plan.replay_from if plan.replay_from is not None else last - (last - first) / 3
    past = [r for r in rows if r.ts < replay_from]
    ahead = [r for r in rows if r.ts >= replay_from]
    if plan.max_events is not None:
        account["not_replayed"] = max(0, len(ahead) - plan.max_events)  # past --max-events
        ahead = ahead[: plan.max_events]
    account["past"], account["replayed"] = len(past), len(ahead)
    if not ahead:
        raise ValueError("nothing to replay after the history's start")
    replay_span = (replay_from, ahead[-1].ts)
    span_s = max(1.0, replay_span[1] - replay_span[0])
    if plan.as_fast_as_possible:
        speed = 1.0  # between steps; each step moves it on (`_feed_fast`)
    elif plan.speed is not None:
        speed = plan.speed
    elif plan.events_per_s is not None:
        speed = span_s / max(1.0, len(ahead) / plan.events_per_s)
    else:
        speed = span_s / max(10.0, plan.budget_s - 20.0)
    # whole weeks forward, so the replay starts after the wall clock's now
    shift_s = math.ceil((time.time() + 2 * 86_400 - replay_from) / WEEK_S) * WEEK_S
    countries = _countries(plan.shoppers)
    users = sorted({str(r.event.get("user_id")) for r in rows if r.event.get("user_id")})
    index_store = plan.run_dir / "index"
    index = _build_index(past, index_store)
    lag_s = max(3600, int(speed * 60))  # a backlog of a wall-clock minute still fires rules
    clock_file = ClockFile(plan.run_dir / "clock.json") if plan.as_fast_as_possible else None
    env = {
        "PUSHREC_CONFIG": str(plan.config),
        "PUSHREC_INDEX_STORE": str(index_store),
        "PUSHREC_TRIGGER_MAX_AGE_S": str(lag_s),
        "PUSHREC_DECISIONS_KEPT": "1000",
        "PUSHREC_DESTINATION_ALLOWED_HOSTS": "127.0.0.1",
        **({"PUSHREC_SIMULATED_CLOCK_FILE": str(clock_file.path)} if clock_file else {}),
        **plan.extra_env,
    }
    holder: dict[str, Any] = {}

    def clock_now() -> SimulatedClock:
        real_origin = time.time() + _START_ALLOWANCE_S
        clock = SimulatedClock(origin=replay_from + shift_s, real_origin=real_origin, speed=speed)
        holder["clock"] = clock
        if clock_file is not None:
            clock_file.write(clock)
        return clock

    spec = StackSpec(run_dir=plan.run_dir, clock_factory=clock_now, env=env,
                     redis_url=plan.redis_url)  # fmt: skip

    def prepare(stack: Stack) -> None:
        _prepare(stack, plan, past, rows, shift_s, users, countries, holder)

    with running_stack(spec, prepare) as stack:
        clock: SimulatedClock = holder["clock"]
        run = ReplayRun(
            plan=plan, clock=clock, shift_s=shift_s, history_span=(first, last),
            replay_span=replay_span, account=account, shoppers=holder["shoppers"],
            sent_at={}, index=index, stack_pids=stack.pids(),
            replayed={str(r.event.get("event_id")): {**r.event, "ts": r.ts} for r in ahead},
        )  # fmt: skip
        if on_stack is not None:
            on_stack(stack)
        settings = Settings.load(redis_url=stack.redis_url, state_dir=plan.run_dir / "state")
        rt = Runtime.open(settings)
        try:
            try:
                if clock_file is not None:
                    _feed_fast(run, stack, rt, ahead, plan, clock_file)
                else:
                    _feed(run, stack, rt, ahead, plan)
            except KeyboardInterrupt:
                run.interrupted = True
                _show("interrupted: collecting what was replayed", final=True)
            run.wall_s = time.time() - started
            result = collect(run, rt) if collect is not None else None
        finally:
            rt.close()
    return run, result


def _prepare(
    stack: Stack,
    plan: ReplayPlan,
    past: list[Row],
    rows: list[Row],
    shift_s: float,
    users: list[str],
    countries: dict[str, str],
    holder: dict[str, Any],
) -> None:
    """Before the workers start: catalog, synthetic devices and preferences, the past
    (state only: no rule fires on it)."""
    settings = Settings.load(
        redis_url=stack.redis_url, state_dir=plan.run_dir / "state", trigger_max_age_s=0,
        destination_allowed_hosts=["127.0.0.1"],
    )  # fmt: skip
    rt = Runtime.open(settings)
    try:
        origin = (past[-1].ts if past else rows[0].ts) + shift_s
        items = _catalog(plan.items, rows, shift_s)
        for start in range(0, len(items), 500):
            ingest.upsert_items(rt, items[start : start + 500], origin)
        admin = stack.gateways["admin"]
        assert isinstance(admin, dict)
        shoppers = {
            u: synthetic_shopper(u, countries.get(u, ""), str(admin["webhook"])) for u in users
        }
        for s in shoppers.values():
            ingest.register_device(rt, s.device(), origin - WEEK_S)
            ingest.set_preferences(rt, s.preferences(), origin - WEEK_S)
        gone: dict[str, list[str]] = {}
        for s in shoppers.values():
            if s.gone:
                gone.setdefault(s.channel, []).append(s.target)
        with httpx.Client(timeout=10) as http:
            for channel, tokens in gone.items():
                http.post(
                    f"{admin[channel]}/_admin/unregister", json={"tokens": tokens}
                ).raise_for_status()
        events = [_shifted(r.event, r.ts, shift_s) for r in past]
        for start in range(0, len(events), 500):
            ingest.track(rt, events[start : start + 500], origin, contract.TRACK_BATCH, "replay")
        holder["shoppers"] = shoppers
    finally:
        rt.close()


def _feed(run: ReplayRun, stack: Stack, rt: Runtime, ahead: list[Row], plan: ReplayPlan) -> None:
    """Send each event when the simulated clock reaches it, then let the clock run on
    until the rules' delays are due or the budget is spent."""
    clock, shift = run.clock, run.shift_s
    progress = Progress(total=len(ahead), started=time.time())
    wait = clock.real_origin - time.time()
    if wait > 0:
        time.sleep(wait)
    progress.started = time.time()
    deadline = progress.started + plan.budget_s
    with PushrecClient(stack.redis_url) as client:
        i = 0
        while i < len(ahead):
            now_sim = clock.now() - shift
            j = i
            while j < len(ahead) and ahead[j].ts <= now_sim:
                j += 1
            for start in range(i, j, _SEND_CHUNK):
                chunk = ahead[start : min(j, start + _SEND_CHUNK)]
                client.track_batch([_shifted(r.event, r.ts, shift) for r in chunk])
                sent = time.time()
                for r in chunk:
                    run.sent_at[str(r.event.get("event_id"))] = sent
            progress.sent = j
            i = j
            _tick(run, progress, stack, rt)
            if i < len(ahead):
                # events due within a quarter second travel together, in fewer tasks
                time.sleep(min(0.25, max(0.0, clock.real_at(ahead[i].ts + shift) - time.time())))
        # the tail: delayed rules of the last events come due
        tail_end = run.replay_span[1] + plan.tail_s
        while clock.now() - shift < tail_end and time.time() < deadline:
            _tick(run, progress, stack, rt)
            time.sleep(0.2)
        _drain(rt, stack, deadline + 30)
    _show(progress_line(run, progress, rt), final=True)


def _feed_fast(
    run: ReplayRun,
    stack: Stack,
    rt: Runtime,
    ahead: list[Row],
    plan: ReplayPlan,
    clock_file: ClockFile,
) -> None:
    """As fast as the workers go: move the clock on by one step (`_step`), send the
    step's events and the jobs due by then (moved as the scheduler moves them, without
    waiting for its next poll, half a poll on average for every step that stops for a
    job), wait until the queues are empty, nothing is being worked on and no delayed job
    is due; repeat. An event is decided at most `_STEP_S` after its time, a delayed job
    (a rule's delay, a deferral, a retry) at most `_JOB_SLACK_S` after its due time, and
    nothing waits on the wall clock: a quiet night is one step."""
    shift = run.shift_s
    progress = Progress(total=len(ahead), started=time.time())
    deadline = progress.started + plan.budget_s
    tail_end = run.replay_span[1] + plan.tail_s
    i = lost = 0
    with PushrecClient(stack.redis_url) as client, task_ledger.counting(rt.settings):

        def enqueue(task: str, kwargs: dict[str, Any]) -> None:
            client.send(task, **kwargs)

        while time.time() < deadline:
            due = _next_due(rt) - shift
            if i >= len(ahead) and due > tail_end:
                break  # every event sent, no delay left to come due within the tail
            j, target = _step(rt, ahead, i, due, shift)
            now = max(target + shift, run.now())  # never backwards
            step = SimulatedClock(origin=now, real_origin=time.time(), speed=1.0)
            clock_file.write(step)
            run.steps.append(step)
            for chunk in _by_shopper(ahead[i:j], rt.settings.batch_max_events):
                client.track_batch([_shifted(r.event, r.ts, shift) for r in chunk])
                sent = time.time()
                for r in chunk:
                    run.sent_at[str(r.event.get("event_id"))] = sent
            progress.sent = i = j
            drain_due(rt.delayed, enqueue, functools.partial(float, now))
            lost = _settled(rt, stack, now, deadline, lost)
            _tick(run, progress, stack, rt)
        _drain(rt, stack, deadline + 30)
    _show(progress_line(run, progress, rt), final=True)


def _step(rt: Runtime, ahead: list[Row], i: int, due: float, shift: float) -> tuple[int, float]:
    """The next step from event `i`, with the first pending job `due` (history time):
    (the end of its events, the history time the clock moves to). It spans what is
    pending from the first event or job on, up to `_STEP_S` after the first event and
    `_JOB_SLACK_S` after the first job, and `_STEP_EVENTS` events; the clock stops at
    the last event or job due within it."""
    first_event = ahead[i].ts if i < len(ahead) else math.inf
    limit = min(min(first_event, due) + _STEP_S, due + _JOB_SLACK_S)
    j = i
    while j < len(ahead) and j - i < _STEP_EVENTS and ahead[j].ts <= limit:
        j += 1
    if j - i == _STEP_EVENTS:
        limit = ahead[j - 1].ts  # the rest of the window is the next step's
    last_job = rt.delayed.last_due(limit + shift)
    target = max(ahead[j - 1].ts if j > i else -math.inf, due if due <= limit else -math.inf)
    if last_job is not None:
        target = max(target, last_job - shift)
    return j, target


def _by_shopper(rows: list[Row], most: int) -> list[list[Row]]:
    """`rows` in tasks the worker processes can take on at once (two at least): each
    shopper's events in one task, in time order, so none is applied before an earlier one;
    at most `most` events a task (the workers' `batch_max_events`: they refuse the rest),
    so a shopper with more in one step (a big order's lines) is split, in order."""
    tasks: list[list[Row]] = [[] for _ in range(max(2, math.ceil(len(rows) / _SEND_CHUNK)))]
    for r in rows:
        tasks[zlib.crc32(str(r.event.get("user_id")).encode()) % len(tasks)].append(r)
    return [t[start : start + most] for t in tasks for start in range(0, len(t), most)]


def _next_due(rt: Runtime) -> float:
    """When the next delayed job is due (simulated epoch seconds), or infinity."""
    return rt.delayed.next_due()


def _settled(rt: Runtime, stack: Stack, now: float, deadline: float, lost: int) -> int:
    """Wait until every task published has run (`task_ledger`), nothing is queued or being
    worked on, no delayed job is due by `now` and none is claimed but not yet enqueued
    (the scheduler claims a batch, then sends its tasks: a job in between is in neither
    the due set nor a queue), or until `deadline`. Polled every millisecond, one round
    trip a poll: the steps of a fast replay are tens of milliseconds.

    A task the ledger never sees run while the queues stay empty (a process killed
    mid-task) would hold the clock for good: after `_STALLED_S` of that it is logged and
    left behind. `lost`: the tasks left behind so far; returns it updated."""
    s = rt.settings
    queues = [s.queue_activity, s.queue_push, s.queue_maintenance]
    stalled_since: float | None = None
    while time.time() < deadline:
        pipe = rt.redis.pipeline(transaction=False)
        task_ledger.queue_unfinished(pipe, rt.keys)
        for q in queues:
            pipe.llen(q)
        pipe.hlen("unacked")
        rt.delayed.queue_unsettled(pipe, now)
        published, finished, *counts = pipe.execute()
        running = task_ledger.unfinished(published, finished) - lost
        busy = sum(int(n) for n in counts)
        if not busy and running <= 0:
            break
        if busy:
            stalled_since = None
        elif stalled_since is None:
            stalled_since = time.monotonic()
        elif time.monotonic() - stalled_since >= _STALLED_S:
            log.warning("%d published tasks never ran; the replay goes on without them", running)
            lost += running
            break
        time.sleep(0.001)
    stack.check()
    return lost


def _tick(run: ReplayRun, progress: Progress, stack: Stack, rt: Runtime) -> None:
    if time.time() - progress.last_line >= (0.5 if sys.stderr.isatty() else 5.0):
        stack.check()
        progress.last_line = time.time()
        _show(progress_line(run, progress, rt))


def _drain(rt: Runtime, stack: Stack, deadline: float) -> None:
    """Wait until the queues are empty and no message waits to be sent, or `deadline`."""
    s = rt.settings
    queues = [s.queue_activity, s.queue_push, s.queue_maintenance]
    while time.time() < deadline:
        stack.check()
        waiting = sum(int(rt.redis.llen(q)) for q in queues)
        unacked = int(rt.redis.hlen("unacked"))
        if waiting == 0 and unacked == 0:
            return
        time.sleep(0.2)
