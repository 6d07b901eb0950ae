"""Scale-out benchmarks (issue 14): prints figures, writes JSON (no timed assertions).

    PYTHONPATH=. python bench/scale.py --part pull [--items 1000000] [--json bench/out/scale.json]
    PYTHONPATH=. python bench/scale.py --part cluster [--events 40000] [--procs 2] [--batch 100]

Parts, each writing its own section of the JSON file (the others are kept, so parts run
separately):

- `cluster`: the batched real-time path on one Redis node and on a three-master Redis
  Cluster (`tests/redis_cluster.py`), on this machine. Each of `--procs` processes opens a
  `Runtime` on the state store and applies its share of the events with
  `ingest.track_batch` (batches of `--batch`, as a `pushrec.track_batch` task does: state
  scripts, interaction log, trending, triggers, the delayed set), for shoppers disjoint
  between processes. Celery is left out: its broker is the same single Redis in both
  layouts (a cluster cannot be the broker), so only the state store differs. The events
  are the shipped Online Retail sample's (bench/ingest.py `retail_events`), topped up with
  synthetic ones; the default rules park their firings in the delayed set. Events/s = all
  events / wall time from the first batch to the last, per layout; `ratio` = cluster /
  node. On one 2-core machine the cluster's three masters (and three replicas) share the
  cores with the clients, so the ratio shows the cost of the cluster client and sharding,
  not the gain of more machines (README, "Scaling out").

- `pull`: the index pull a worker host does at start-up or on a new version, from a local
  S3-compatible server (SeaweedFS, `tests/object_store.py`) on this machine: a synthetic
  catalog of `--items` items (`bench/index.py`'s `synthetic_model`: d = 64, item-item lists
  of 200), written and uploaded by a builder host, then fetched by a fresh host (download +
  every sha256 checked), loaded (`load_index`, memory-mapped), and fetched again (cached:
  sizes only). Loopback: this measures our code, boto3 and the disk, not a network.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from index import synthetic_model
from ingest import retail_events

import indexing
from indexing.build import BuildParams
from tests.object_store import TEST_CREDENTIALS, seaweedfs_server
from tests.redis_cluster import redis_cluster
from tests.redis_server import delete_prefix, private_redis_server
from worker.service import ingest
from worker.service.runtime import Runtime
from worker.settings import Settings

_MB = 1 << 20


def bench_pull(items: int, index_kind: str, weed_log: Path) -> dict[str, Any]:
    os.environ.update(TEST_CREDENTIALS)
    build = BuildParams(exact_max_items=items + 1 if index_kind == "flat" else 0)
    with (
        tempfile.TemporaryDirectory(prefix="pushrec-bench-scale-") as tmp,
        seaweedfs_server(Path(tmp) / "weed.log") as endpoint,
    ):
        work = Path(tmp)
        indexing.s3.S3Objects("bench", endpoint_url=endpoint).create_bucket()

        def store(name: str) -> indexing.RemoteStore:
            opened = indexing.open_store("s3://bench/index", work / name, endpoint_url=endpoint)
            assert isinstance(opened, indexing.RemoteStore)
            return opened

        builder, host = store("builder"), store("host")
        timed: dict[str, float] = {}

        def clock(name: str, step: Callable[[], Any]) -> Any:
            started = time.perf_counter()
            out = step()
            timed[name] = time.perf_counter() - started
            print(f"  {name}: {timed[name]:.2f} s", flush=True)
            return out

        version, spec = clock(
            "synthesize_and_write",
            lambda: indexing.save_model(builder.staging, synthetic_model(items), build=build),
        )
        clock("upload", lambda: builder.upload(version))
        clock("publish", lambda: builder.publish(version, force=True))
        fetched = clock("fetch", lambda: host.fetch(version))
        index = clock("load", lambda: indexing.load_index(fetched.folder, version, verify=False))
        assert len(index) == items
        again = clock("fetch_cached", lambda: host.fetch(version))
        assert again.downloaded_bytes == 0
        size = fetched.downloaded_bytes
        pull = timed["fetch"] + timed["load"]
        return {
            "items": items,
            "index": spec.as_dict(),
            "artifact_mb": size / _MB,
            "files": len(host.read_manifest(version)["files"]),
            "seconds": timed,
            "pull_seconds": pull,
            "download_and_verify_mb_per_s": size / _MB / timed["fetch"],
        }


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


def _measure(
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


def bench_cluster(n_events: int, procs: int, batch: int) -> dict[str, Any]:
    events, source = retail_events(n_events)
    print(f"{len(events)} events ({source}), {procs} processes, batches of {batch}")
    results: dict[str, Any] = {}
    with private_redis_server() as node:
        results["node"] = _measure(node, node, events, procs, batch)
        print("node   ", results["node"])
        with redis_cluster() as cluster:
            results["cluster"] = _measure(cluster.url, node, events, procs, batch)
            print("cluster", results["cluster"])
    ratio = results["cluster"]["events_per_s"] / results["node"]["events_per_s"]
    print(f"cluster / node: {ratio:.2f}")
    return {
        "source": source,
        "procs": procs,
        "batch": batch,
        "results": results,
        "ratio_cluster_to_node": round(ratio, 3),
    }


def _merge(path: Path, part: str, figures: dict[str, Any]) -> None:
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    data[part] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **figures,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", choices=["pull", "cluster"], required=True)
    parser.add_argument("--items", type=int, default=1_000_000, help="pull: catalog size")
    parser.add_argument("--events", type=int, default=40_000, help="cluster: events applied")
    parser.add_argument("--procs", type=int, default=2, help="cluster: client processes")
    parser.add_argument("--batch", type=int, default=100, help="cluster: events per track_batch")
    parser.add_argument(
        "--index",
        choices=["flat", "hnsw"],
        default="flat",
        help="pull: the FAISS index kind (hnsw adds its graph to the artifact and ~4 min of "
        "build at 1M items; flat has the same arrays)",
    )
    parser.add_argument("--json", type=Path, default=Path("bench/out/scale.json"))
    args = parser.parse_args()
    if args.part == "cluster":
        figures = bench_cluster(args.events, args.procs, args.batch)
    if args.part == "pull":
        weed_log = Path(tempfile.gettempdir()) / "pushrec-bench-scale-weed.log"
        figures = bench_pull(args.items, args.index, weed_log)
        print(f"SeaweedFS log: {weed_log}")
        print(
            f"\npull of {figures['items']:,} items ({figures['index']['kind']}, "
            f"{figures['artifact_mb']:.0f} MB in {figures['files']} files): download + "
            f"verify {figures['seconds']['fetch']:.1f} s "
            f"({figures['download_and_verify_mb_per_s']:.0f} MB/s), load "
            f"{figures['seconds']['load']:.2f} s, total {figures['pull_seconds']:.1f} s; "
            f"cached again {figures['seconds']['fetch_cached'] * 1000:.0f} ms; upload "
            f"{figures['seconds']['upload']:.1f} s"
        )
    _merge(args.json, args.part, figures)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
