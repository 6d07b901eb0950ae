"""Category peers: each item's category's best sellers as item-item weights, and what the
tuning makes of them on a shop where the aisle is what predicts the next purchase."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from indexing import Item, ModelParams, discovery_task, evaluate_models, read_events, train_model
from indexing.categories import category_codes, category_peers, with_category_peers
from indexing.experiment import CATEGORY_POPULAR
from indexing.factors import AlsParams
from indexing.item_item import ItemItemParams
from indexing.tuning import tune
from tests.indexing.conftest import DAY, T0
from tests.indexing.test_tuning import SMALL_GRID


def test_codes_follow_first_appearance_and_mark_items_without_a_category() -> None:
    catalog = {"a": Item("a", category="x"), "b": Item("b"), "c": Item("c", category="y")}
    codes = category_codes(["c", "a", "b", "z", "a"], catalog)
    assert codes.tolist() == [0, 1, -1, -1, 1]


def test_a_row_holds_its_categorys_best_sellers_by_share_without_itself() -> None:
    categories = np.array([0, 0, 0, 1, 1, -1, 0, 0])
    buyers = np.array([5.0, 3.0, 0.0, 2.0, 2.0, 9.0, 1.0, 1.0])
    peers = category_peers(categories, buyers, top_m=2).toarray()
    mass = 5 + 3 + 1 + 1
    # the two best sellers, each at its share; a best seller's row takes the next one
    assert peers[2].tolist() == pytest.approx([5 / mass, 3 / mass, 0, 0, 0, 0, 0, 0])
    assert peers[0].tolist() == pytest.approx([0, 3 / mass, 0, 0, 0, 0, 1 / mass, 0])
    # ties go to the lower row (6 before 7)
    assert peers[1].tolist() == pytest.approx([5 / mass, 0, 0, 0, 0, 0, 1 / mass, 0])
    assert peers[3].tolist() == pytest.approx([0, 0, 0, 0, 0.5, 0, 0, 0])  # 2 of 4
    assert not peers[5].any()  # no category: no peers
    assert not peers[:, 2].any() and not peers[:, 5].any()  # nobody bought it / no category


def test_peers_join_the_item_item_weights_at_their_scale() -> None:
    sim = sp.csr_matrix(np.array([[0, 2.0, 2.0], [4.0, 0, 0], [0, 0, 0]], dtype=np.float32))
    peers = sp.csr_matrix(np.array([[0, 0.5, 0.5], [1.0, 0, 0], [1.0, 0, 0]], dtype=np.float32))
    assert with_category_peers(sim, peers, 0.0) is sim
    out = with_category_peers(sim, peers, 0.5).toarray()
    scale = (4.0 + 4.0) / 2  # the mean sum of the non-empty rows
    assert out == pytest.approx(sim.toarray() + 0.5 * scale * peers.toarray())


def _aisle_shop(seed: int = 0) -> tuple[list[dict[str, str]], dict[str, Item]]:
    """60 aisles of 25 items, a few best sellers in each; every shopper buys, now and then,
    in two favourite aisles, mostly the aisle's best sellers. Few shoppers per item pair:
    what co-purchase can learn is thin, the aisle says what comes next."""
    rng = np.random.default_rng(seed)
    aisles, per_aisle = 60, 25
    share = 1.0 / np.arange(1, per_aisle + 1) ** 1.5
    share /= share.sum()
    catalog = {
        f"i{a}-{k}": Item(f"i{a}-{k}", category=f"aisle{a}")
        for a in range(aisles)
        for k in range(per_aisle)
    }
    rows: list[dict[str, str]] = []
    n = 0
    for u in range(500):
        favourites = rng.choice(aisles, size=2, replace=False)
        start = float(rng.uniform(0, 60))
        for t in range(8):
            a = int(favourites[rng.integers(2)])
            k = int(rng.choice(per_aisle, p=share))
            n += 1
            rows.append(
                {
                    "event_id": f"e{n}",
                    "user_id": f"u{u}",
                    "item_id": f"i{a}-{k}",
                    "type": "purchase",
                    "ts": str(T0 + (start + 5 * t) * DAY),
                    "quantity": "1",
                    "price": "",
                }
            )
    return rows, catalog


def test_where_the_aisle_predicts_the_tuning_takes_the_category_peers() -> None:
    rows, catalog = _aisle_shop()
    log, _ = read_events(rows)
    task = discovery_task(log)
    without, _, _ = tune(task.train, SMALL_GRID)
    assert without.category_strength == 0.0  # no catalogue: nothing to take
    params, baselines, report = tune(task.train, SMALL_GRID, catalog=catalog)
    assert params.category_strength > 0
    assert report["chosen_model"]["category_strength"] == params.category_strength  # type: ignore[index]
    # the strength is chosen per item-item kind (the peers are scaled to each kind's
    # weights): one sweep per kind, and the chosen kind's best strength is served
    sweeps = report["category_strengths"]
    assert isinstance(sweeps, list)
    assert len({str(s["item_item"]) for s in sweeps}) == len(sweeps) == SMALL_GRID.blend_kinds
    [own] = [s["recall@10"] for s in sweeps if s["item_item"] == params.item_item.as_dict()]
    assert own[str(params.category_strength)] == max(own.values())
    result = evaluate_models(log, params, baselines, catalog=catalog)
    served = result.metrics["served_blend"]["recall@10"]
    name, best = result.best_baseline()
    assert name != CATEGORY_POPULAR  # a reference, not one of the baselines
    assert served > best
    plain = evaluate_models(log, without, baselines, catalog=catalog)
    assert served > plain.metrics["served_blend"]["recall@10"]


def test_a_model_trained_with_category_peers_serves_them() -> None:
    rows, catalog = _aisle_shop(seed=1)
    log, _ = read_events(rows)
    base = ModelParams(
        als=AlsParams(factors=8, iterations=5), item_item=ItemItemParams("cosine", 10)
    )
    plain = train_model(log, base)
    with_peers = train_model(
        log, ModelParams(**{**base.__dict__, "category_strength": 1.0}), catalog=catalog
    )
    assert with_peers.similarity.nnz > plain.similarity.nnz
    # an item's row now reaches the best seller of its aisle, bought with it or not
    row = with_peers.item_ids.index("i7-20")
    best = with_peers.item_ids.index("i7-0")
    assert with_peers.similarity[row, best] > 0
    # no catalogue, or strength 0: the item-item weights alone
    same = train_model(log, base, catalog=catalog).similarity  # (+ the catalogue's cold rows)
    n = plain.similarity.shape[0]
    assert np.array_equal(same[:n, :n].toarray(), plain.similarity.toarray())
    assert (
        ModelParams.from_dict({**base.as_dict(), "category_strength": 1.0}).category_strength == 1.0
    )
    legacy = {k: v for k, v in base.as_dict().items() if k != "category_strength"}
    assert ModelParams.from_dict(legacy).category_strength == 0.0
