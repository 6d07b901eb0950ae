"""The batched real-time path on one Redis node and on a three-master Redis Cluster, on
this machine (issue 14, "Benchmark", the cluster half). Prints a table, writes JSON.

Each of `--procs` processes opens a `Runtime` on the state store and applies its share
of the events with `ingest.track_batch` (batches of `--batch`, as a `pushrec.track_batch`
task does: state scripts, interaction log, trending, triggers, the delayed set), for
shoppers disjoint between processes. Celery is left out: its broker is the same single
Redis in both layouts (a cluster cannot be the broker), so only the state store differs.
The events are the shipped Online Retail sample's (bench/ingest.py `retail_events`),
topped up with synthetic ones; the default rules park their firings in the delayed set.
Events/s = all events / wall time from the first batch to the last, per layout;
`ratio` = cluster / node.

    PYTHONPATH=. python bench/scale_cluster.py [--events 40000] [--procs 2]
        [--json bench/out/scale_cluster.json]

On one 2-core machine the cluster's three masters (and three replicas) share the cores
with the clients, so the ratio shows the cost of the cluster client and sharding, not
the gain of more machines (README, "Scaling out").
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ingest import retail_events  # noqa: E402
from tests.redis_cluster import redis_cluster  # noqa: E402
from tests.redis_server import delete_prefix, private_redis_server  # noqa: E402
from worker.service import ingest  # noqa: E402
from worker.service.runtime import Runtime  # noqa: E402
from worker.settings import Settings  # noqa: E402


def _drive(
    url: str, broker: str, prefix: str, state: str, events: list[dict[str, Any]], batch: int
) -> tuple[float, float]:
    """Apply `events` in batches; (start, end) wall times."""
    settings = Settings.load(
        redis_url=url, broker_url=broker, key_prefix=prefix, state_dir=Path(state)
    )
    rt = Runtime.open(settings)
    try:
        ingest.track_batch(rt, events[:batch], time.time(), "warm-up")  # scripts, pools
        start = time.perf_counter()
        for n in range(batch, len(events), batch):
            ingest.track_batch(rt, events[n : n + batch], time.time(), f"b{n}")
        return start, time.perf_counter()
    finally:
        rt.close()


def measure(
    url: str, broker: str, events: list[dict[str, Any]], procs: int, batch: int
) -> dict[str, Any]:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    shares: list[list[dict[str, Any]]] = [[] for _ in range(procs)]
    for e in events:  # one shopper's events stay in one process, in order
        shares[hash(str(e["user_id"])) % procs].append(e)
    with tempfile.TemporaryDirectory() as state:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(procs) as pool:
            spans = pool.starmap(
                _drive, [(url, broker, prefix, state, share, batch) for share in shares]
            )
    delete_prefix(url, prefix)
    measured = sum(max(0, len(s) - batch) for s in shares)
    seconds = max(end for _, end in spans) - min(start for start, _ in spans)
    settings = Settings.load(redis_url=url, broker_url=broker)
    return {
        "events": measured,
        "seconds": round(seconds, 3),
        "events_per_s": round(measured / seconds, 1),
        "shards": settings.shards,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--batch", type=int, default=100, help="events per track_batch")
    parser.add_argument("--json", type=Path, default=ROOT / "bench/out/scale_cluster.json")
    args = parser.parse_args()
    events, source = retail_events(args.events)
    print(f"{len(events)} events ({source}), {args.procs} processes, batches of {args.batch}")
    results: dict[str, Any] = {}
    with private_redis_server() as node:
        results["node"] = measure(node, node, events, args.procs, args.batch)
        print("node   ", results["node"])
        with redis_cluster() as cluster:
            results["cluster"] = measure(cluster.url, node, events, args.procs, args.batch)
            print("cluster", results["cluster"])
    ratio = results["cluster"]["events_per_s"] / results["node"]["events_per_s"]
    print(f"cluster / node: {ratio:.2f}")
    out = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": source,
        "procs": args.procs,
        "batch": args.batch,
        "results": results,
        "ratio_cluster_to_node": round(ratio, 3),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
