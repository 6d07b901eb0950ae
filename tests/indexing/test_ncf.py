"""NeuMF (`indexing.ncf`): learns planted blocks better than popularity, scores every item
exactly as the network scores one pair, is deterministic for a seed, never samples a
positive as a negative; `pushrec eval --models ncf` reports it, or exits 2 without torch."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexing import discovery_task, evaluate_rankings, read_events
from indexing.baselines import PopularityRanker, popularity
from indexing.experiment import rank_all
from indexing.matrix import Weighting, interaction_matrix
from indexing.ncf import (
    INSTALL_HINT,
    NcfGrid,
    NcfParams,
    _negatives,
    train_ncf,
    tune_ncf,
)
from tests.indexing.conftest import planted_rows, write_csv
from worker.cli import main

SMALL = NcfParams(factors=8, layers=(16, 8, 4), epochs=15, lr=0.01, batch_size=256)


def test_ncf_learns_planted_blocks_and_beats_popularity() -> None:
    pytest.importorskip("torch")
    log, _ = read_events(planted_rows(per_user=8))
    task = discovery_task(log)
    raw = interaction_matrix(task.train, Weighting(), as_of=task.split_ts)
    n_warm = int(task.warm.sum())
    ncf = train_ncf(raw, SMALL)
    tr = task.train
    pop = PopularityRanker(popularity(tr.users, tr.items, tr.ts, len(tr.item_ids)))
    recall = {
        name: evaluate_rankings(rank_all(r, task, 10), task.truth, n_warm, (10,))["recall@10"]
        for name, r in (("ncf", ncf), ("popularity", pop))
    }
    assert recall["ncf"] > recall["popularity"] + 0.2, recall
    # the top items of a user are the items of the user's own block
    users = task.users
    top = np.argsort(-ncf.scores(users), axis=1)[:, :4]
    item_block = np.array([int(i.split("-")[0][1:]) for i in tr.item_ids])
    user_block = np.array([int(tr.user_ids[u].split("-")[0][1:]) for u in users])
    assert np.mean(item_block[top] == user_block[:, None]) > 0.9


def test_scores_of_every_item_equal_the_network_on_each_pair() -> None:
    pytest.importorskip("torch")
    log, _ = read_events(planted_rows())
    raw = interaction_matrix(log, Weighting())
    ranker = train_ncf(raw, NcfParams(factors=4, layers=(8, 6, 3), epochs=2, batch_size=256))
    users = np.array([0, 5, 17], dtype=np.int64)
    scores = ranker.scores(users)
    assert scores.shape == (3, raw.shape[1]) and scores.dtype == np.float32
    items = np.arange(raw.shape[1], dtype=np.int64)
    for row, user in enumerate(users.tolist()):
        pairs = ranker.logits(np.full(items.shape[0], user, dtype=np.int64), items)
        np.testing.assert_allclose(scores[row], pairs, rtol=1e-5, atol=1e-5)


def test_ncf_is_deterministic_for_a_seed() -> None:
    pytest.importorskip("torch")
    log, _ = read_events(planted_rows())
    raw = interaction_matrix(log, Weighting())
    params = NcfParams(factors=4, layers=(8, 4), epochs=2, batch_size=256, l2=1e-4)
    users = np.arange(10, dtype=np.int64)
    first = train_ncf(raw, params).scores(users)
    np.testing.assert_array_equal(first, train_ncf(raw, params).scores(users))
    other = train_ncf(raw, replace(params, seed=1))
    assert not np.array_equal(first, other.scores(users))


def test_negatives_are_never_a_positive_of_their_user() -> None:
    n_items = 5
    users = np.repeat(np.arange(3, dtype=np.int64), 200)
    # user 0 has bought items 0-3 (one candidate left), user 1 item 0, user 2 nothing
    positives = np.array([0, 1, 2, 3, 5], dtype=np.int64)
    items = _negatives(
        np.random.default_rng(0), users, np.arange(n_items, dtype=np.int64), positives, n_items
    )
    assert set(items[users == 0].tolist()) == {4}
    assert 0 not in set(items[users == 1].tolist())
    assert set(items[users == 2].tolist()) == set(range(n_items))


def test_tune_ncf_scores_every_setting_per_epoch_and_picks_the_best_mean() -> None:
    pytest.importorskip("torch")
    log, _ = read_events(planted_rows(per_user=8))
    train = discovery_task(log).train
    grid = NcfGrid(
        settings=(SMALL, replace(SMALL, lr=0.001)),
        max_epochs=4,
        second_round=1,
    )
    chosen, report = tune_ncf(train, grid)
    first: Any = report["first_split"]
    splits: Any = report["all_splits"]
    assert len(first) == 2
    assert all(len(s["recall@10_by_epoch"]) == 4 for s in first)
    (kept,) = splits
    assert len(kept["recall@10_by_epoch_per_split"]) == len(grid.validation_fractions)
    assert report["validation_recall@10"] == max(kept["mean_by_epoch"])
    assert 1 <= chosen.epochs <= 4 and chosen.lr == kept["lr"]


def test_eval_models_ncf_adds_a_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    events = write_csv(tmp_path / "events.csv", planted_rows(per_user=8))
    out = tmp_path / "eval.json"
    code = main(
        ["eval", "--events", str(events), "--no-tune", "--models", "ncf", "--json", str(out)]
    )
    assert code == 0
    table = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in table[1:] if line.strip()]
    assert names.index("ncf") == names.index("served_blend") - 1
    payload = json.loads(out.read_text())
    # measured like every baseline (the learning test above checks what it learns)
    assert set(payload["metrics"]["ncf"]) == set(payload["metrics"]["als"])
    assert payload["ncf"]["params"] == NcfParams().as_dict()
    assert payload["ncf"]["train_seconds"] == payload["seconds"]["ncf_train"]


def test_eval_models_ncf_without_torch_exits_2_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    events = write_csv(tmp_path / "events.csv", planted_rows())
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--events", str(events), "--models", "ncf"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert INSTALL_HINT in err and "pip install 'pushrec[ncf]'" in err
