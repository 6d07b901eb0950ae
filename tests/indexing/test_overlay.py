"""Items added to a loaded index after its build, and items blocked: every answer follows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexing import (
    BlendWeights,
    BuildParams,
    Item,
    LoadedIndex,
    ModelParams,
    configure_threads,
    load_index,
    read_events,
    save_model,
    train_model,
)
from indexing import lookup as lookup_module
from indexing.attributes import ATTRIBUTE_ARRAYS
from indexing.factors import AlsParams
from indexing.store import MANIFEST_FILE
from tests.indexing.conftest import ITEMS_PER_BLOCK, planted_rows

PARAMS = ModelParams(als=AlsParams(factors=8, iterations=10))
HISTORY = ["b0-1", "b0-2", "b0-3"]
WEIGHTS = [5.0, 5.0, 1.0]


@pytest.fixture(scope="module", params=["flat", "hnsw"])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A version whose catalog puts block 0 in category cat0 (with one cold item, new-0)
    and block 1 under brand br1."""
    configure_threads()
    log, _ = read_events(planted_rows())
    catalog = {
        "new-0": Item("new-0", category="cat0"),
        **{f"b0-{j}": Item(f"b0-{j}", category="cat0") for j in range(ITEMS_PER_BLOCK)},
        **{f"b1-{j}": Item(f"b1-{j}", brand="br1") for j in range(ITEMS_PER_BLOCK)},
    }
    model = train_model(log, PARAMS, catalog=catalog)
    store = tmp_path_factory.mktemp("store")
    exact_max = 10**6 if request.param == "flat" else 0
    version, _ = save_model(
        store, model, build=BuildParams(exact_max_items=exact_max), catalog=catalog
    )
    return store / version


@pytest.fixture
def index(built: Path) -> LoadedIndex:
    """A fresh load per test: the tests change its overlay and blocked set."""
    return load_index(built.parent, built.name)


def ids(answer: list[tuple[str, float]]) -> list[str]:
    return [i for i, _ in answer]


def test_a_new_item_gets_the_vector_the_build_gives_a_cold_item(index: LoadedIndex) -> None:
    by_category = index.attribute_vector("cat0", "br1")
    assert by_category is not None
    assert np.array_equal(by_category, index.factors[index.row("new-0")])
    by_brand = index.attribute_vector("unknown", "br1")
    block1 = index.rows([f"b1-{j}" for j in range(ITEMS_PER_BLOCK)])
    assert by_brand is not None
    assert np.allclose(by_brand, np.asarray(index.factors)[block1].mean(axis=0), atol=1e-6)
    assert index.attribute_vector("unknown", "unknown") is None
    assert index.attribute_vector() is None


def test_an_added_item_is_searched_found_similar_and_scored_as_a_built_cold_one(
    index: LoadedIndex,
) -> None:
    vector = index.attribute_vector("cat0")
    assert vector is not None
    assert index.add_items(["late-0"], vector[None, :]) == ["late-0"]
    assert "late-0" in index and not index.is_built("late-0") and index.is_cold("late-0")
    assert index.overlay == ("late-0",)

    assert np.allclose(index.vector("late-0"), index.vector("new-0"), atol=1e-6)
    top = index.search(index.vector("late-0")[None, :], k=2)[0]
    assert "late-0" in ids(top) and top[0][1] == pytest.approx(1.0, abs=1e-5)

    assert "late-0" in ids(index.similar(["b0-1"], k=ITEMS_PER_BLOCK + 1)[0])
    near = index.similar(["late-0", "b0-1"], k=5)
    assert "late-0" not in ids(near[0]) and len(near[0]) == 5
    assert all(i.startswith(("b0-", "new-0")) for i in ids(near[0]))

    # no co-occurrence, no recent buyers: exactly the score of the built cold item
    new, late = index.score(HISTORY, WEIGHTS, ["new-0", "late-0"])
    assert late == pytest.approx(new, abs=1e-6) and late > 0
    recs = dict(index.recommend(HISTORY, WEIGHTS, k=len(index) + 1))
    assert recs["late-0"] == pytest.approx(recs["new-0"], abs=1e-6)
    assert not set(recs) & set(HISTORY)
    assert "late-0" not in ids(index.recommend(HISTORY, WEIGHTS, k=50, exclude=["late-0"]))
    assert "late-0" not in ids(index.recommend(["late-0", *HISTORY], [1.0, *WEIGHTS], k=50))


def test_the_candidate_path_scores_overlay_items_too(
    index: LoadedIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    vector = index.attribute_vector("cat0")
    assert vector is not None
    index.add_items(["late-0"], vector[None, :])
    monkeypatch.setattr(lookup_module, "FULL_SCORE_MAX_ITEMS", 0)
    recs = dict(index.recommend(HISTORY, WEIGHTS, k=len(index) + 1))
    assert recs["late-0"] == pytest.approx(recs["new-0"], abs=1e-6)


def test_an_item_holding_the_mf_maximum_rescales_the_built_items(index: LoadedIndex) -> None:
    mf_only = BlendWeights(mf=1.0, knn=0.0, pop=0.0)
    built = [f"b{b}-{j}" for b in range(4) for j in range(4, 8)]
    before = np.array(index.score(HISTORY, WEIGHTS, built, mf_only))
    strong = 10.0 * np.abs(index.factors).max() * index.fold_in(HISTORY, WEIGHTS)
    index.add_items(["strong"], strong[None, :])
    *after, top = index.score(HISTORY, WEIGHTS, [*built, "strong"], mf_only)
    assert top == pytest.approx(1.0)  # it holds the maximum: its MF term is 1
    ratio = np.array(after) / before  # every built MF term on the new, larger scale
    assert np.allclose(ratio, ratio[0]) and 0 < ratio[0] < 1
    assert ids(index.recommend(HISTORY, WEIGHTS, k=1, blend=mf_only)) == ["strong"]


def test_blocking_takes_items_out_of_every_answer_added_or_built(index: LoadedIndex) -> None:
    vector = index.attribute_vector("cat0")
    assert vector is not None
    index.block(["late-0", "b0-4"])  # late-0 is blocked before it is known
    index.add_items(["late-0", "late-1"], np.vstack([vector, vector]))
    assert index.blocked == {"late-0", "b0-4"}
    answers = [
        ids(index.similar(["b0-1"], k=20)[0]),
        ids(index.similar(["late-1"], k=20)[0]),
        ids(index.search(index.vector("late-1")[None, :], k=20)[0]),
        ids(index.recommend(HISTORY, WEIGHTS, k=60)),
    ]
    for answer in answers:
        assert "late-0" not in answer and "b0-4" not in answer
    assert "late-1" in answers[0] and "late-1" in answers[3]
    index.unblock(["late-0", "b0-4"])
    back = ids(index.recommend(HISTORY, WEIGHTS, k=60))
    assert {"late-0", "b0-4"} <= set(back)


def test_adding_again_replaces_built_ids_are_skipped_and_the_cap_holds(
    index: LoadedIndex,
) -> None:
    cat0, br1 = index.attribute_vector("cat0"), index.attribute_vector("", "br1")
    assert cat0 is not None and br1 is not None
    index.overlay_max = 2
    assert index.add_items(["b0-1", "late-0"], np.vstack([br1, cat0])) == ["late-0"]
    assert "b0-1" not in index.overlay  # the build's vector stands
    assert index.add_items(["late-0"], br1[None, :]) == ["late-0"]  # replaced
    assert np.allclose(index.vector("late-0"), br1 / np.linalg.norm(br1), atol=1e-6)
    assert index.add_items(["late-1", "late-2"], np.vstack([cat0, cat0])) == ["late-1"]
    assert index.overlay == ("late-0", "late-1") and "late-2" not in index


def test_an_artifact_without_attribute_means_still_loads(built: Path, tmp_path: Path) -> None:
    """A version written before the means were stored: it serves, and derives no vectors."""
    import shutil

    old = tmp_path / built.name
    shutil.copytree(built, old)
    manifest = json.loads((old / MANIFEST_FILE).read_text())
    for name in ATTRIBUTE_ARRAYS:
        (old / f"{name}.npy").unlink()
        del manifest["files"][f"{name}.npy"]
    manifest["arrays"] = [a for a in manifest["arrays"] if a not in ATTRIBUTE_ARRAYS]
    (old / MANIFEST_FILE).write_text(json.dumps(manifest))
    index = load_index(tmp_path, built.name)
    assert index.attribute_means is None and index.attribute_vector("cat0") is None
    assert len(index.recommend(HISTORY, WEIGHTS, k=3)) == 3


def test_the_overlay_table_answers_the_best_first_ties_by_row_without_banned_rows() -> None:
    from indexing.overlay import Overlay

    rng = np.random.default_rng(3)
    table, taken = Overlay.empty(4).with_items(
        [f"o{j}" for j in range(50)], rng.normal(size=(50, 4)).astype(np.float32), 40
    )
    assert len(taken) == 40 and len(table) == 40
    scores = np.round(rng.normal(size=40), 1)  # many ties
    banned = {int(np.argmax(scores)), 7}
    expected = [r for r in np.lexsort((np.arange(40), -scores)).tolist() if r not in banned]
    assert [i for i, _ in table.best(scores, 6, banned)] == [f"o{r}" for r in expected[:6]]
    query = table.unit[[3]]
    assert table.search(query, 1)[0][0][0] == "o3"
    assert "o3" not in [i for i, _ in table.search(query, 5, own=[3])[0]]
