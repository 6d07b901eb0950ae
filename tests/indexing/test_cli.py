"""`pushrec index build|info`, `pushrec eval`, `pushrec data convert` end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from indexing import ModelParams
from tests.indexing.conftest import planted_rows, write_csv
from worker.cli import main


@pytest.fixture
def events(tmp_path: Path) -> Path:
    rows = planted_rows(per_user=8)
    rows.append({**rows[0], "event_id": "bad", "type": "teleport"})
    return write_csv(tmp_path / "events.csv", rows)


def test_eval_writes_table_json_and_recs(
    tmp_path: Path, events: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, recs = tmp_path / "eval.json", tmp_path / "recs.csv"
    code = main(
        [
            "eval",
            "--events",
            str(events),
            "--json",
            str(out),
            "--dump-recs",
            str(recs),
            "--rejected",
            str(tmp_path / "rej.csv"),
            "--no-tune",
        ]
    )
    assert code == 0
    printed = capsys.readouterr()
    assert "served_blend" in printed.out and "recall@10" in printed.out
    assert '"unknown_type": 1' in printed.err  # the bad row is reported
    assert "unknown_type" in (tmp_path / "rej.csv").read_text()
    payload = json.loads(out.read_text())
    names = set(payload["metrics"])
    assert {"popularity_all", "item_knn", "als", "served_blend"} <= names
    assert any(n.startswith("popularity_recent") for n in names)
    for metrics in payload["metrics"].values():
        assert {"recall@10", "ndcg@10", "hr@10", "coverage@10", "recall@20"} <= set(metrics)
    with open(recs, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and set(rows[0]) == {"user_id", "rank", "item_id"}
    first_user = [r for r in rows if r["user_id"] == rows[0]["user_id"]]
    assert [int(r["rank"]) for r in first_user] == list(range(1, len(first_user) + 1))


def test_index_build_publish_and_info(
    tmp_path: Path, events: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    assert main(["index", "build", "--events", str(events), "--out", str(store), "--publish"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["published"]["version"] == built["version"]
    assert main(["index", "info", "--store", str(store)]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["version"] == built["version"] and manifest["index"]["kind"] == "flat"
    assert "served" in manifest["evaluation"]


def test_index_info_without_a_build_exits_2(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["index", "info", "--store", str(tmp_path / "empty")])
    assert exc.value.code == 2


def test_data_convert_online_retail_slice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.indexing.test_online_retail import HEADER, LINES

    src = tmp_path / "raw.csv"
    src.write_text(HEADER + "\n".join(LINES) + "\n")
    assert main(["data", "convert", "online-retail", str(src), str(tmp_path / "out")]) == 0
    assert json.loads(capsys.readouterr().out)["events"] == 3


def test_index_build_until_and_params_file(
    tmp_path: Path, events: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = tmp_path / "eval.json"
    item_item = {**ModelParams().item_item.as_dict(), "top_m": 7}
    params.write_text(json.dumps({"params": {**ModelParams().as_dict(), "item_item": item_item}}))
    store = tmp_path / "store"
    with pytest.raises(SystemExit) as exc:  # no event before --until: refused, nothing written
        main(
            [
                "index",
                "build",
                "--events",
                str(events),
                "--out",
                str(store),
                "--until",
                "1700000000",
                "--params",
                str(params),
            ]
        )
    assert exc.value.code == 2 and not store.exists()
    assert "no usable events" in capsys.readouterr().err
    code = main(
        [
            "index",
            "build",
            "--events",
            str(events),
            "--out",
            str(store),
            "--until",
            "2023-12-15T00:00:00Z",
            "--params",
            str(params),
        ]
    )
    assert code == 0
    built = json.loads(capsys.readouterr().out)
    manifest = json.loads((store / built["version"] / "manifest.json").read_text())
    assert manifest["params"]["item_item"]["top_m"] == 7
    assert 0 < manifest["counts"]["events"] < 1280  # only events before --until


def test_index_build_refused_by_the_gate_exits_1_and_keeps_current(
    tmp_path: Path, events: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    assert main(["index", "build", "--events", str(events), "--out", str(store), "--publish"]) == 0
    first = json.loads(capsys.readouterr().out)["version"]
    # a broken export: item ids shuffled across rows, so the blocks cannot be learnt
    rows = planted_rows(per_user=8)
    shuffled = np.random.default_rng(1).permutation([r["item_id"] for r in rows])
    broken = write_csv(
        tmp_path / "broken.csv",
        [{**r, "item_id": str(i)} for r, i in zip(rows, shuffled, strict=True)],
    )
    argv = ["index", "build", "--events", str(broken), "--out", str(store), "--publish"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["published"] is None and "not published" in captured.err
    assert (store / "current").read_text().strip() == first
