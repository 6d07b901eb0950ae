"""`pushrec index build|info|pull` (`rebuild` and `publish`: index_publish.py), `pushrec
eval`, `pushrec data convert online-retail` and `pushrec data sample`.

Thin wrappers over the `indexing` library: parse arguments, call it, print JSON or a
table, map its errors to exit codes (0 ok, 1 refused by the quality gate, 2 bad input or
unreadable artifact).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import indexing
from indexing import ncf
from indexing.sample import SAMPLE_DIR, SampleSpec, build_sample, sample_files
from worker.cli import index_publish
from worker.cli.common import fail, load_settings, print_json
from worker.cli.index_publish import (
    add_gate_options,
    moves_pointer,
    point_or_fail,
    workers_redis,
)
from worker.firing.index_store import open_index_store

if TYPE_CHECKING:
    from worker.service.runtime import Runtime

_METRICS = ("recall", "ndcg", "hr", "coverage")
#: Models `eval --models` can add to the table (each an optional extra).
EXTRA_MODELS = ("ncf",)


def register(subparsers: Any) -> None:
    index = subparsers.add_parser("index", help="build and inspect FAISS index artifacts")
    index_sub = index.add_subparsers(dest="index_command", required=True, metavar="ACTION")
    build = index_sub.add_parser("build", help="train, evaluate and write a new index version")
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument("--events", type=Path, help="interactions CSV (.gz ok)")
    source.add_argument(
        "--sample",
        action="store_true",
        help="the shipped Online Retail sample's events and items (a first index to try)",
    )
    build.add_argument("--items", type=Path, help="items CSV (cold-start attributes)")
    build.add_argument(
        "--unless-published",
        action="store_true",
        help="do nothing if the store already has a published version (a seed that may rerun)",
    )
    build.add_argument(
        "--out", help="index store, a folder or s3://bucket/prefix (default: settings index_store)"
    )
    build.add_argument("--until", help="use only events with ts < TS (epoch or ISO-8601)")
    build.add_argument(
        "--publish",
        action="store_true",
        help="make it current (quality gate) and, in the settings' store, move the workers' "
        "Redis pointer to it",
    )
    add_gate_options(build)
    build.add_argument("--rejected", type=Path, help="write rejected event rows here (CSV)")
    build.add_argument(
        "--params",
        type=Path,
        help="model parameters as JSON (the `params` of `pushrec eval --json`, or bare)",
    )
    build.set_defaults(handler=cmd_index_build)
    info = index_sub.add_parser("info", help="print the current manifest as JSON")
    info.add_argument("--store", help="index store (default: settings index_store)")
    info.set_defaults(handler=cmd_index_info)
    pull = index_sub.add_parser(
        "pull",
        help="fetch the published version into this host's index cache, verified (start-up)",
    )
    pull.add_argument("--store", help="index store (default: settings index_store)")
    pull.add_argument("--version", help="this version instead of the published one")
    pull.set_defaults(handler=cmd_index_pull)
    index_publish.register(index_sub)

    ev = subparsers.add_parser("eval", help="offline evaluation: served model vs baselines")
    ev.add_argument("--events", type=Path, required=True)
    ev.add_argument("--items", type=Path)
    ev.add_argument("--json", type=Path, help="write figures as JSON here")
    ev.add_argument("--dump-recs", type=Path, help="write served top-20 as user_id,rank,item_id")
    ev.add_argument("--rejected", type=Path, help="write rejected event rows here (CSV)")
    ev.add_argument(
        "--no-tune", action="store_true", help="use the default (shipped) hyperparameters"
    )
    ev.add_argument(
        "--models",
        nargs="+",
        choices=EXTRA_MODELS,
        default=[],
        metavar="MODEL",
        help=f"extra models to tune and report beside the baselines: ncf (NeuMF; needs "
        f"{ncf.INSTALL_HINT})",
    )
    ev.set_defaults(handler=cmd_eval)

    data = subparsers.add_parser("data", help="data set adapters")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    convert = data_sub.add_parser("convert", help="convert a public data set to canonical CSVs")
    convert.add_argument("dataset", choices=["online-retail"])
    convert.add_argument("src", type=Path)
    convert.add_argument("out_dir", type=Path)
    convert.set_defaults(handler=cmd_data_convert)
    sample = data_sub.add_parser(
        "sample", help="cut the shipped Online Retail sample from the full raw file"
    )
    spec = SampleSpec()
    sample.add_argument("src", type=Path, help="online_retail.csv.gz (or its folder)")
    sample.add_argument("out_dir", type=Path, nargs="?", default=SAMPLE_DIR)
    sample.add_argument("--shoppers", type=int, default=spec.shoppers)
    sample.add_argument("--start", default=spec.start, help="first day kept (UTC date)")
    sample.add_argument("--end", default=spec.end, help="first day not kept (UTC date)")
    sample.add_argument("--seed", type=int, default=spec.seed)
    sample.set_defaults(handler=cmd_data_sample)


def _read_log(
    path: Path, until: float | None = None, rejected: Path | None = None
) -> indexing.EventLog:
    try:
        log, report = indexing.read_events_csv(path, until=until)
    except indexing.InputError as exc:
        fail(str(exc))
    print(f"events {path}: {json.dumps(report.as_dict())}", file=sys.stderr)
    if report.rejected_total:
        for row in report.kept[:5]:
            print(f"  rejected line {row.line}: {row.reason}: {row.row}", file=sys.stderr)
        if rejected is not None:
            try:
                report.write_rejected(rejected)
                print(f"rejected rows written to {rejected}", file=sys.stderr)
            except OSError as exc:
                print(f"could not write rejected rows: {exc}", file=sys.stderr)
    return log


def _read_items(path: Path | None) -> dict[str, indexing.Item]:
    if path is None:
        return {}
    try:
        items, report = indexing.read_items_csv(path)
    except indexing.InputError as exc:
        fail(str(exc))
    print(f"items {path}: {json.dumps(report.as_dict())}", file=sys.stderr)
    return items


def _read_params(path: Path | None) -> indexing.ModelParams:
    if path is None:
        return indexing.ModelParams()
    try:
        return indexing.read_model_params(path)
    except indexing.InputError as exc:
        fail(f"--params: {exc}")


def _store(location: str | None) -> indexing.ArtifactStore:
    try:
        return open_index_store(load_settings(), location)
    except (ValueError, indexing.MissingDependencyError) as exc:
        fail(f"index store: {exc}")


def cmd_index_build(args: argparse.Namespace) -> int:
    until = None
    if args.until:
        try:
            until = indexing.parse_ts(args.until)
        except ValueError:
            fail(f"--until: not a timestamp: {args.until!r}")
    store = _store(args.out)
    if args.unless_published:
        try:
            print(f"published already: {store.current_version()}", file=sys.stderr)
            return 0
        except indexing.ArtifactNotFoundError:
            pass
        except indexing.ArtifactError as exc:
            fail(f"cannot read {store}: {exc}")
    events, items = args.events, args.items
    if args.sample:
        events, items = sample_files().events, items or sample_files().items
    pointer: AbstractContextManager[Runtime | None] = nullcontext()
    if args.publish and moves_pointer(load_settings(), args.out):
        pointer = workers_redis()  # checked before the build: exit 2 if it does not answer
    with pointer as rt:
        log = _read_log(events, until, args.rejected)
        catalog = _read_items(items)
        params = _read_params(args.params)
        try:
            result = indexing.build_version(
                log,
                store,
                catalog=catalog,
                params=params,
                publish_it=args.publish,
                force=args.force,
                max_drop=args.max_drop,
            )
        except indexing.EmptyDataError as exc:
            fail(str(exc))
        except indexing.ArtifactError as exc:
            fail(f"built but not publishable: {exc}")
        for note in result.notes:
            print(note, file=sys.stderr)
        if rt is not None and result.published is not None and not result.refused:
            point_or_fail(rt, result.version)
    print_json(result.as_dict())
    if result.refused:
        print(f"pushrec: {result.refused}", file=sys.stderr)
        return 1
    return 0


def cmd_index_info(args: argparse.Namespace) -> int:
    store = _store(args.store)
    try:
        manifest = store.read_manifest(store.current_version())
    except indexing.ArtifactError as exc:
        fail(str(exc))
    print_json(manifest)
    return 0


def cmd_index_pull(args: argparse.Namespace) -> int:
    """Exit 0 with the folder and timings, 2 when nothing is published or the version is
    bad, 3 when the store cannot give it now (not uploaded yet, unreachable: try again)."""
    store = _store(args.store)
    started = time.perf_counter()
    try:
        version = args.version or store.current_version()
        fetched = store.fetch(version)
        fetch_s = time.perf_counter() - started
        index = indexing.load_index(fetched.folder, version, verify=False)
    except (indexing.ArtifactNotFoundError, indexing.StoreUnavailableError) as exc:
        fail(f"not available now, try again: {exc}", code=3)
    except indexing.ArtifactError as exc:
        fail(str(exc))
    load_s = time.perf_counter() - started - fetch_s
    print_json(
        {
            "store": str(store),
            "version": version,
            "folder": str(fetched.folder / version),
            "downloaded_bytes": fetched.downloaded_bytes,
            "items": len(index),
            "seconds": {"fetch": fetch_s, "load": load_s},
        }
    )
    return 0


def _table(metrics: dict[str, dict[str, float]]) -> str:
    cols = [f"{m}@{k}" for k in (10, 20) for m in _METRICS]
    width = max(len(n) for n in metrics) + 2
    lines = ["model".ljust(width) + " ".join(c.rjust(12) for c in cols)]
    for name, m in metrics.items():
        lines.append(name.ljust(width) + " ".join(f"{m[c]:12.4f}" for c in cols))
    return "\n".join(lines)


def _describe(params: indexing.ModelParams) -> str:
    b = params.blend
    return (
        f"blend mf {b.mf:g} + item-item {b.knn:g} + popularity {b.pop:g}; "
        f"ALS {params.als.factors} factors; item-item {params.item_item.label()}; "
        f"popularity window {params.recent_days:g} d ({params.popularity_scale} scale); "
        f"category peers {params.category_strength:g}"
    )


def _eval_ncf(
    task: indexing.DiscoveryTask, result: indexing.EvalResult, tune_it: bool
) -> dict[str, object]:
    """Tune NCF on the train period's validation splits (unless `tune_it` is false), train it
    on the train period and put its metrics into `result` as the row `ncf`, before the
    served rows. Returns the JSON report (parameters, validation figures, timings)."""
    report: dict[str, object] = {}
    params = ncf.NcfParams()
    if tune_it:
        params, report = ncf.tune_ncf(task.train)
        print(
            f"ncf validation recall@10 {report['validation_recall@10']:.4f} "
            f"({json.dumps(params.as_dict())}; tuning {report['seconds']:.0f} s)",
            file=sys.stderr,
        )
    metrics, train_s = ncf.evaluate_ncf(task, params)
    served = {n: m for n, m in result.metrics.items() if n.startswith("served_blend")}
    others = {n: m for n, m in result.metrics.items() if n not in served}
    result.metrics = {**others, "ncf": metrics, **served}
    result.seconds["ncf_train"] = train_s
    return {"params": params.as_dict(), "tuning": report, "train_seconds": train_s}


def cmd_eval(args: argparse.Namespace) -> int:
    if "ncf" in args.models:
        try:
            ncf.require_torch()
        except indexing.MissingDependencyError as exc:
            fail(str(exc))
    log = _read_log(args.events, rejected=args.rejected)
    catalog = _read_items(args.items)  # categories; cold items play no part offline
    tune_report: dict[str, object] = {}
    extra: dict[str, object] = {}
    started = time.perf_counter()
    try:
        task = indexing.discovery_task(log) if args.models or not args.no_tune else None
        if task is None or args.no_tune:
            params, baselines = indexing.ModelParams(), indexing.BaselineParams()
        else:
            params, baselines, tune_report = indexing.tune(task.train, catalog=catalog)
        tune_s = time.perf_counter() - started
        mark = time.perf_counter()
        result = indexing.evaluate_models(log, params, baselines, catalog=catalog)
        result_s = time.perf_counter() - mark
        ncf_s = 0.0
        if task is not None and "ncf" in args.models:
            mark = time.perf_counter()
            extra["ncf"] = _eval_ncf(task, result, not args.no_tune)
            ncf_s = time.perf_counter() - mark
    except indexing.EmptyDataError as exc:
        fail(str(exc))
    print(_table(result.metrics))
    name, best = result.best_baseline()
    served = result.metrics["served_blend"]["recall@10"]
    total_s = time.perf_counter() - started
    print(
        f"\nserved recall@10 {served:.4f} = {served / best:.3f} x best baseline "
        f"({name}, {best:.4f}); test users {result.counts['test_users']}"
    )
    reference = result.metrics.get(indexing.CATEGORY_POPULAR)
    if reference and reference["recall@10"]:
        print(
            f"reference: {served / reference['recall@10']:.3f} x {indexing.CATEGORY_POPULAR} "
            f"({reference['recall@10']:.4f}, the catalogue's categories alone)"
        )
    print(f"served model: {_describe(params)}")
    ncf_note = f", ncf (tuning and training) {ncf_s:.0f} s" if ncf_s else ""
    print(f"wall time: tuning {tune_s:.0f} s, evaluation {result_s:.0f} s{ncf_note}")
    if args.json:
        payload = result.as_dict()
        payload.update(
            params=params.as_dict(),
            baseline_params=baselines.as_dict(),
            tuning=tune_report,
            tune_seconds=tune_s,
            eval_seconds=total_s,
            **extra,
        )
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    if args.dump_recs:
        args.dump_recs.parent.mkdir(parents=True, exist_ok=True)
        with open(args.dump_recs, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["user_id", "rank", "item_id"])
            for user in sorted(result.served_recs):
                for rank, item in enumerate(result.served_recs[user], start=1):
                    writer.writerow([user, rank, item])
    return 0


def cmd_data_convert(args: argparse.Namespace) -> int:
    try:
        report = indexing.convert_online_retail(args.src, args.out_dir)
    except indexing.InputError as exc:
        fail(str(exc))
    print_json({"out_dir": str(args.out_dir), **report.as_dict()})
    return 0


def cmd_data_sample(args: argparse.Namespace) -> int:
    spec = SampleSpec(shoppers=args.shoppers, start=args.start, end=args.end, seed=args.seed)
    try:
        counts = build_sample(args.src, args.out_dir, spec)
    except indexing.InputError as exc:
        fail(str(exc))
    print_json({"out_dir": str(args.out_dir), **counts})
    return 0
