"""Lookups on a loaded artifact of planted blocks: answers stay inside the block."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from indexing import (
    BuildParams,
    Item,
    LoadedIndex,
    ModelParams,
    UnknownItemError,
    configure_threads,
    load_index,
    read_events,
    save_model,
    train_model,
)
from indexing.blend import PopularityScale, popularity_term
from indexing.factors import AlsParams
from tests.indexing.conftest import BLOCKS, ITEMS_PER_BLOCK, block_of, planted_rows

PARAMS = ModelParams(als=AlsParams(factors=8, iterations=10))


@pytest.fixture(scope="module", params=["flat", "hnsw"])
def index(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LoadedIndex:
    configure_threads()
    log, _ = read_events(planted_rows())
    catalog = {
        "new-0": Item("new-0", category="cat0"),  # cold, has a category
        "new-1": Item("new-1"),  # cold, nothing known: no vector
        **{f"b0-{j}": Item(f"b0-{j}", category="cat0") for j in range(ITEMS_PER_BLOCK)},
    }
    model = train_model(log, PARAMS, catalog=catalog)
    store = tmp_path_factory.mktemp("store")
    exact_max = 10**6 if request.param == "flat" else 0
    version, spec = save_model(store, model, build=BuildParams(exact_max_items=exact_max))
    assert spec.kind == request.param
    return load_index(store, version)


def test_similar_items_share_the_block(index: LoadedIndex) -> None:
    queries = [f"b{b}-0" for b in range(BLOCKS)]
    answers = index.similar(queries, k=5)
    for query, answer in zip(queries, answers, strict=True):
        assert len(answer) == 5 and query not in [i for i, _ in answer]
        assert all(block_of(i) == block_of(query) for i, _ in answer if not i.startswith("new"))
        assert [s for _, s in answer] == sorted((s for _, s in answer), reverse=True)


def test_unknown_ids_answer_empty_or_raise(index: LoadedIndex) -> None:
    assert index.similar(["nope", "b1-1"], k=3)[0] == []
    assert "nope" not in index and "b1-1" in index
    with pytest.raises(UnknownItemError):
        index.vector("nope")


def test_exclusion_and_blocking_take_effect_without_rebuild(index: LoadedIndex) -> None:
    first = [i for i, _ in index.similar(["b2-0"], k=3)[0]]
    again = [i for i, _ in index.similar(["b2-0"], k=3, exclude=[first[0]])[0]]
    assert first[0] not in again and len(again) == 3
    index.block([first[1]])
    try:
        assert first[1] not in [i for i, _ in index.similar(["b2-0"], k=5)[0]]
        recs = index.recommend(["b2-0", "b2-3"], [5.0, 5.0], k=10)
        assert first[1] not in [i for i, _ in recs]
    finally:
        index.unblock([first[1]])
    assert first[1] in [i for i, _ in index.similar(["b2-0"], k=5)[0]]


def test_vector_search_and_item_vector(index: LoadedIndex) -> None:
    v = index.vector("b3-2")
    assert v.dtype == np.float32 and v.shape == (8,)
    assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5)
    answer = index.search(v[None, :], k=1)[0]
    assert answer[0][0] == "b3-2"


def test_fold_in_is_a_unit_vector_near_the_shoppers_block(index: LoadedIndex) -> None:
    u = index.fold_in(["b1-0", "b1-1", "unknown"], [5.0, 1.0, 3.0])
    assert np.linalg.norm(u) == pytest.approx(1.0, abs=1e-5)
    top = index.search(u, k=5)[0]
    assert all(block_of(i) == 1 for i, _ in top if not i.startswith("new"))
    assert not index.fold_in(["unknown"]).any()
    started = time.perf_counter()
    for _ in range(200):
        index.fold_in(["b1-0", "b1-1"], [5.0, 1.0])
    assert time.perf_counter() - started < 5.0  # a sanity bound, not a benchmark


def test_recommend_excludes_history_and_prefers_the_block(index: LoadedIndex) -> None:
    history = ["b0-1", "b0-2", "b0-3"]
    recs = index.recommend(history, [5.0, 5.0, 1.0], k=5, exclude=["b0-4"])
    ids = [i for i, _ in recs]
    assert len(ids) == 5 and not set(ids) & {*history, "b0-4"}
    assert sum(i.startswith("b0-") for i in ids) >= 4
    scores = index.score(history, [5.0, 5.0, 1.0], [ids[0], "b3-0", "nope"])
    assert scores[0] > scores[1] and np.isnan(scores[2])


def test_cold_start_item_gets_its_category_mean_and_is_flagged(index: LoadedIndex) -> None:
    assert index.is_cold("new-0") and not index.is_cold("b0-0")
    assert "new-1" not in index  # no category, no brand: nothing to derive a vector from
    neighbours = [i for i, _ in index.similar(["new-0"], k=5)[0]]
    assert all(i.startswith("b0-") for i in neighbours)
    assert index.manifest["counts"]["cold_items"] == 1


def test_empty_history_recommends_popular_items(index: LoadedIndex) -> None:
    recs = index.recommend([], k=3)
    assert len(recs) == 3


def test_index_file_is_memory_mapped(index: LoadedIndex) -> None:
    assert isinstance(index.factors, np.memmap)


def test_recent_item_weights_match_the_offline_histories(index: LoadedIndex) -> None:
    from indexing import recent_item_weights, shopper_histories

    events = [("b0-1", "view", 100.0), ("b0-2", "purchase", 200.0), ("b0-1", "purchase", 50.0)]
    weighting = index.history_weighting
    ids, weights = recent_item_weights(events, now=200.0 + 86_400.0, weighting=weighting)
    assert ids == ["b0-2", "b0-1"]
    rows = [
        {"event_id": str(n), "user_id": "u", "item_id": i, "type": t, "ts": ts}
        for n, (i, t, ts) in enumerate(events)
    ]
    log, _ = read_events(rows)
    hist = shopper_histories(log, weighting, 200.0 + 86_400.0)[0]
    assert [log.item_ids[r] for r in hist[0]] == ids
    assert np.allclose(hist[1], weights, rtol=1e-5)
    assert index.history_items == 200


def test_offline_histories_read_the_latest_events_as_the_worker_keeps_them(
    index: LoadedIndex,
) -> None:
    """A version built with `history_events` (before the accumulated history) is served
    from the worker's recent list, its latest events newest first; the evaluation of such
    a version reads the same window."""
    from indexing import recent_item_weights, shopper_histories

    rng = np.random.default_rng(2)
    events = [
        (f"b0-{int(rng.integers(0, 6))}", str(rng.choice(["view", "purchase"])), float(ts))
        for ts in rng.permutation(40)
    ]
    rows = [
        {"event_id": str(n), "user_id": "u", "item_id": i, "type": t, "ts": ts}
        for n, (i, t, ts) in enumerate(events)
    ]
    log, _ = read_events(rows)
    weighting, now = index.history_weighting, 40.0 + 86_400.0
    kept = sorted(events, key=lambda e: -e[2])  # newest first, as the recent list
    for window in (5, 12):
        ids, weights = recent_item_weights(kept[:window], now=now, weighting=weighting)
        hist = shopper_histories(log, weighting, now, max_events=window)[0]
        assert [log.item_ids[r] for r in hist[0]] == ids
        assert np.allclose(hist[1], weights, rtol=1e-5)


@pytest.mark.parametrize("scale", ["log", "linear"])
def test_served_path_answers_what_the_evaluation_measured(
    scale: PopularityScale, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`LoadedIndex.recommend` on a saved model == the evaluation's ranking of that model
    (the popularity scale travels in the version's params)."""
    from indexing import accumulated_histories, discovery_task
    from indexing.experiment import served_rankings

    log, _ = read_events(planted_rows(per_user=8))
    task = discovery_task(log)
    params = replace(PARAMS, popularity_scale=scale)
    model = train_model(task.train, params, as_of=task.split_ts)
    store = tmp_path_factory.mktemp("served")
    version, _ = save_model(store, model)
    index = load_index(store, version)
    assert (
        index.blend.popularity.tolist() == popularity_term(model.recent_popularity, scale).tolist()
    )
    evaluated = served_rankings(task, model)
    assert index.history_events is None  # the accumulated history
    histories = accumulated_histories(task.train, PARAMS.history_items).weights(
        PARAMS.history_weighting, task.split_ts
    )
    assert evaluated
    for user, ranking in evaluated.items():
        codes, weights = histories[user]
        ids = [task.train.item_ids[c] for c in codes.tolist()]
        served = index.recommend(ids, weights.tolist(), k=len(ranking))
        assert [i for i, _ in served] == [task.train.item_ids[c] for c in ranking]


def test_scoring_every_item_equals_scoring_them_as_candidates(index: LoadedIndex) -> None:
    """The full-catalog shortcut (no row gathers) scores exactly as the candidate path."""
    rows = index.rows(["b0-1", "b0-2", "b1-3"])
    weights = np.array([2.0, 1.0, 0.5])
    every = np.arange(len(index.item_ids), dtype=np.intp)
    assert np.array_equal(
        index.blend.score(rows, weights, None), index.blend.score(rows, weights, every)
    )


Shoppers = list[tuple[list[str], list[float], set[str]]]


def _shoppers(index: LoadedIndex, n: int, seed: int) -> Shoppers:
    """Random histories (some empty, some with unknown ids), weights and exclusions."""
    rng = np.random.default_rng(seed)
    ids = list(index.item_ids)
    out = []
    for s in range(n):
        history = [ids[i] for i in rng.choice(len(ids), size=s % 7, replace=False)]
        if s % 5 == 3:
            history.append("not-an-item")
        weights = rng.uniform(0.1, 5.0, size=len(history)).round(3).tolist()
        exclude = {ids[i] for i in rng.choice(len(ids), size=s % 4, replace=False)}
        out.append((history, weights, exclude))
    return out


def test_recommending_for_a_batch_answers_what_each_shopper_gets_alone(
    index: LoadedIndex,
) -> None:
    """The batch of a `track_batch` is scored as one matrix: the same items in the same
    order as one `recommend` per shopper, scores equal to float32 rounding; blocked items
    stay out of both."""
    index.block(["b1-0", "b2-3"])
    try:
        shoppers = _shoppers(index, 40, seed=7)
        ks = [3 + n % 9 for n in range(len(shoppers))]
        batch = index.recommend_many(
            [(h, w) for h, w, _ in shoppers], ks, [ex for _, _, ex in shoppers]
        )
        for (history, weights, exclude), k, got in zip(shoppers, ks, batch, strict=True):
            alone = index.recommend(history, weights, k=k, exclude=exclude)
            assert [i for i, _ in got] == [i for i, _ in alone]
            assert np.allclose([s for _, s in got], [s for _, s in alone], rtol=1e-6, atol=1e-7)
            assert not {i for i, _ in got} & {"b1-0", "b2-3", *exclude, *history}
    finally:
        index.unblock(["b1-0", "b2-3"])


def test_neighbours_for_a_batch_answer_what_each_query_gets_alone(index: LoadedIndex) -> None:
    shoppers = _shoppers(index, 30, seed=11)
    queries = [(history[:2], exclude) for history, _, exclude in shoppers]
    ks = [2 + n % 6 for n in range(len(queries))]
    batch = index.similar_many(queries, ks)
    for (items, exclude), k, got in zip(queries, ks, batch, strict=True):
        alone = index.similar(items, k=k, exclude=exclude)
        assert [[i for i, _ in per] for per in got] == [[i for i, _ in per] for per in alone]
        for per_got, per_alone in zip(got, alone, strict=True):
            assert np.allclose([s for _, s in per_got], [s for _, s in per_alone], rtol=1e-6)


def test_the_evaluation_scores_the_loaded_index_where_a_large_catalog_is_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Below the full-scoring limit the loaded index ranks as the evaluation's own scoring;
    above it, `served_blend` is what `recommend`'s candidate set serves, the every-item
    scoring is reported beside it, and neither counts as a baseline."""
    from indexing import BaselineParams, discovery_task, evaluate_models, experiment
    from indexing.experiment import SERVED, SERVED_EVERY_ITEM, loaded_rankings, served_rankings

    log, _ = read_events(planted_rows(per_user=8))
    task = discovery_task(log)
    model = train_model(task.train, PARAMS, as_of=task.split_ts)
    assert loaded_rankings(task, model) == served_rankings(task, model)
    small = evaluate_models(log, PARAMS, BaselineParams())
    assert SERVED_EVERY_ITEM not in small.metrics
    monkeypatch.setattr(experiment, "FULL_SCORE_MAX_ITEMS", 10)
    monkeypatch.setattr("indexing.lookup.FULL_SCORE_MAX_ITEMS", 10)
    monkeypatch.setattr("indexing.lookup._CANDIDATES_PER_SOURCE", 3)
    large = evaluate_models(log, PARAMS, BaselineParams())
    assert large.metrics[SERVED_EVERY_ITEM] == small.metrics[SERVED]
    assert large.best_baseline()[0] not in (SERVED, SERVED_EVERY_ITEM)
    # the served figure is the candidate set's (3 per source here), not every item's
    candidates = loaded_rankings(task, model)
    assert candidates != served_rankings(task, model)
    ids = task.train.item_ids
    assert large.served_recs == {
        task.train.user_ids[u]: [ids[c] for c in r] for u, r in candidates.items()
    }


def test_a_query_whose_exclusions_outrun_the_shared_search_still_gets_its_k(
    index: LoadedIndex,
) -> None:
    """The batch searches a little past each k for exclusions; a shopper who excludes
    the whole neighbourhood (a loyal customer's purchases) is asked again alone, and
    gets `similar`'s k, not a short list."""
    item = index.item_ids[0]
    nearest = [i for i, _ in index.similar([item], k=len(index.item_ids))[0]]
    queries = [([item], nearest[:12]), ([index.item_ids[5]], [])]
    batch = index.similar_many(queries, [3, 3])
    assert [i for i, _ in batch[0][0]] == nearest[12:15]
    for (items, exclude), got in zip(queries, batch, strict=True):
        assert got == index.similar(items, k=3, exclude=exclude)


@pytest.mark.parametrize(("cache_max", "kept_max"), [(5, 5), (10_000, 256)])
def test_neighbours_kept_from_an_earlier_query_answer_what_a_fresh_search_does(
    index: LoadedIndex, cache_max: int, kept_max: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An item's ranking is kept for its next query; each answer is still the first k
    past that query's own exclusions and the blocked items, a ranking kept less deep
    than a query needs is searched again (kept no deeper than a bound), and a full
    cache starts over. On the flat index the answers equal a fresh vector search
    (HNSW's depend on the depth searched)."""
    monkeypatch.setattr("indexing.lookup._NEAR_CACHE_MAX", cache_max)
    monkeypatch.setattr("indexing.lookup._NEAR_KEPT_MAX", kept_max)  # 5: deeper asks search
    flat = not getattr(index.neighbours, "_hnsw", False)
    ids = list(index.item_ids)
    rng = np.random.default_rng(3)
    index.block([ids[7]])
    try:
        for n in range(60):
            item = ids[int(rng.integers(len(ids)))]
            k = 1 + n % 9
            exclude = {ids[int(i)] for i in rng.choice(len(ids), size=n % 14, replace=False)}
            if n % 3 == 0:  # its whole neighbourhood: past any ranking kept
                everyone = index.similar([item], k=len(ids))[0]
                exclude = {i for i, _ in everyone[: 2 * k + 4]}
            got = index.similar([item], k=k, exclude=exclude)[0]
            assert got == index.similar_many([([item], exclude)], [k])[0][0]
            names = [i for i, _ in got]
            assert len(names) == k and item not in names and ids[7] not in names
            assert not set(names) & exclude
            assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)
            if flat:
                fresh = index.search(index.vector(item), k=k + 1, exclude=exclude)[0]
                expected = [(i, s) for i, s in fresh if i != item][:k]
                assert names == [i for i, _ in expected]
                assert np.allclose([s for _, s in got], [s for _, s in expected], atol=1e-5)
    finally:
        index.unblock([ids[7]])
    assert ids[7] in [i for i, _ in index.similar([ids[6]], k=len(ids))[0]]
