"""Ingest throughput: events/s through `pushrec.track` and `pushrec.track_batch`, beside a
no-op task as the ceiling of Celery + Redis on this machine, in the same run.

Each case pre-fills its queue, starts a real `pushrec worker` (prefork, one child per
core), and measures the drain rate between 10% and 90% done, so neither producer cost
nor worker start-up is counted. Events are purchases from the Online Retail log when
`../shared/data` is present, else from the shipped sample (`retail.py`).

    python bench/ingest.py [--runs 3] [--json bench/out/ingest.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from retail import retail_csvs  # noqa: E402

from indexing.events import open_text  # noqa: E402
from tests.redis_server import delete_prefix, redis_server  # noqa: E402
from worker import contract  # noqa: E402
from worker.client import PushrecClient  # noqa: E402


def retail_events(limit: int) -> tuple[list[dict[str, Any]], str]:
    """Purchase events from the real log (or the shipped sample), topped up with
    synthetic ones up to `limit`; and the name of the source."""
    events: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path, _, source = retail_csvs(Path(tmp))
        with open_text(path) as fh:
            for row in csv.DictReader(fh):
                if len(events) == limit:
                    return events, source
                events.append(
                    {
                        "event_id": f"or-{row['event_id']}",
                        "user_id": row["user_id"],
                        "type": row["type"],
                        "item_id": row["item_id"],
                        "ts": datetime.fromisoformat(row["ts"]).replace(tzinfo=UTC).timestamp(),
                        "quantity": int(row["quantity"]),
                        "price": float(row["price"]),
                    }
                )
    source += " + synthetic"
    while len(events) < limit:
        n = len(events)
        events.append(
            {
                "event_id": f"syn-{n}",
                "user_id": f"u{n % 5000}",
                "type": ("view", "add_to_cart", "purchase")[n % 3],
                "item_id": f"sku-{n % 4000}",
                "ts": time.time() - 3600,
            }
        )
    return events, source


class Case:
    def __init__(self, url: str, name: str) -> None:
        self.prefix = f"bench{uuid.uuid4().hex[:8]}"
        self.url = url
        self.name = name
        self.queue = f"{self.prefix}.activity"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHREC_")}
        self.env.update(
            PUSHREC_REDIS_URL=url,
            PUSHREC_KEY_PREFIX=self.prefix,
            PUSHREC_BROKER_KEY_PREFIX=f"{self.prefix}:",
            PUSHREC_QUEUE_ACTIVITY=self.queue,
            PUSHREC_QUEUE_PUSH=f"{self.prefix}.push",
            PUSHREC_QUEUE_MAINTENANCE=f"{self.prefix}.maintenance",
        )
        self.client = PushrecClient(
            url, broker_key_prefix=f"{self.prefix}:", queues={"activity": self.queue}
        )
        self.redis = redis.Redis.from_url(url, decode_responses=True)

    def queue_len(self) -> int:
        return int(self.redis.llen(f"{self.prefix}:{self.queue}"))  # type: ignore[arg-type]

    def applied(self) -> int:
        return int(self.redis.hget(f"{self.prefix}:metrics", "events.applied") or 0)  # type: ignore[arg-type]

    def run_worker(self, progress: Callable[[], int], total: int, log: Path) -> float:
        """Start a worker, wait until all `total` are done; return units/s between 10% and
        90% done."""
        with log.open("wb") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "worker", "worker", "--loglevel=WARNING",
                 f"--concurrency={os.cpu_count() or 1}", f"--name={self.prefix}@%h"],
                env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                marks: dict[float, float] = {}
                deadline = time.monotonic() + 600
                while len(marks) < 3:
                    if worker.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"worker failed: {log.read_text()[-2000:]}")
                    done = progress()
                    for share in (0.1, 0.9, 1.0):
                        if share not in marks and done >= share * total:
                            marks[share] = time.perf_counter()
                    time.sleep(0.01)
                return 0.8 * total / (marks[0.9] - marks[0.1])
            finally:
                worker.terminate()
                worker.wait(timeout=30)

    def close(self) -> None:
        self.client.close()
        delete_prefix(self.url, self.prefix)
        self.redis.close()


def measure(url: str, kind: str, events: list[dict[str, Any]], log_dir: Path) -> dict[str, float]:
    case = Case(url, kind)
    try:
        t0 = time.perf_counter()
        if kind == "noop":
            for _ in events:
                case.client.send(contract.NOOP)
            calls = len(events)
        elif kind == "track":
            for event in events:
                case.client.track(event)
            calls = len(events)
        else:
            for start in range(0, len(events), 100):
                case.client.track_batch(events[start : start + 100])
            calls = (len(events) + 99) // 100
        enqueue_s = time.perf_counter() - t0
        total = len(events)
        if kind == "noop":
            rate = case.run_worker(lambda: total - case.queue_len(), total, log_dir / "noop.log")
        else:
            rate = case.run_worker(case.applied, total, log_dir / f"{kind}.log")
            if case.applied() != total:
                raise RuntimeError(f"{kind}: applied {case.applied()} of {total} events")
        return {"events_per_s": rate, "producer_ms_per_call": 1000 * enqueue_s / calls}
    finally:
        case.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--single", type=int, default=4000, help="calls for noop and track")
    parser.add_argument("--batched", type=int, default=40_000, help="events for track_batch")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "ingest.json")
    args = parser.parse_args()

    events, source = retail_events(max(args.single, args.batched))
    results: dict[str, list[dict[str, float]]] = {"noop": [], "track": [], "track_batch": []}
    with redis_server() as url, tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            for kind in results:
                batch = events[: args.batched] if kind == "track_batch" else events[: args.single]
                # Fresh event ids per run: a repeat would be a (cheaper) duplicate.
                batch = [{**e, "event_id": f"{e['event_id']}-{run}"} for e in batch]
                results[kind].append(measure(url, kind, batch, Path(tmp)))
                print(f"run {run + 1} {kind:12s} {results[kind][-1]['events_per_s']:9.0f} ev/s")

    summary = {
        kind: {
            "median_events_per_s": statistics.median(r["events_per_s"] for r in runs),
            "runs_events_per_s": [round(r["events_per_s"], 1) for r in runs],
            "median_producer_ms_per_call": statistics.median(
                r["producer_ms_per_call"] for r in runs
            ),
        }
        for kind, runs in results.items()
    }
    ceiling = summary["noop"]["median_events_per_s"]
    report = {
        "bench": "ingest",
        "machine": {"cpus": os.cpu_count()},
        "source": source,
        "runs": args.runs,
        "results": summary,
        "track_vs_noop": summary["track"]["median_events_per_s"] / ceiling,
        "targets": {"track_vs_noop": 0.6, "track_batch_events_per_s": 10_000},
    }
    print()
    print(f"{'case':12s} {'median ev/s':>12s} {'vs noop':>8s} {'producer ms/call':>17s}")
    for kind, row in summary.items():
        print(
            f"{kind:12s} {row['median_events_per_s']:12.0f} "
            f"{row['median_events_per_s'] / ceiling:8.2f} "
            f"{row['median_producer_ms_per_call']:17.3f}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
