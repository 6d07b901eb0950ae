"""Which items to put in a message: the shopper's state and the index, filtered.

Candidates come from the served model (`LoadedIndex.recommend`, the scoring that won the
offline evaluation, fed with the shopper's accumulated item history weighted by type and
recency),
plus the FAISS neighbours of the rule's trigger items. They are merged, filtered
(already bought, in the cart unless the rule is about the cart, out of stock, blocked),
diversified (at most a share from one category) and each one carries its reason. With
no index, or a shopper the index knows nothing about, trending items fill in.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from indexing import HistoryEntry, LoadedIndex, item_weights, recent_item_weights


class Candidate(NamedTuple):
    """One recommendable item, its score and why. A named tuple rather than a frozen
    dataclass: a firing builds dozens per shopper, at under half the cost each."""

    item_id: str
    score: float
    reason: str
    source: str  # trigger | model | neighbour | trending

    def as_dict(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "score": round(self.score, 5),
            "reason": self.reason,
            "source": self.source,
        }


@dataclasses.dataclass(frozen=True)
class ShopperView:
    """What recommendation needs of a shopper: recent events, the accumulated item
    history, owned and cart items."""

    recent: Sequence[Mapping[str, Any]]  # newest first: {item_id, type, ts}
    purchased: frozenset[str]
    cart: frozenset[str]
    history: Sequence[HistoryEntry] = ()  # the state's accumulated item history


# The shopper's items a reason may name: the trigger's, then the most recent ones (their
# catalog entries are read with the candidates', for their titles).
REASON_ITEMS = 5

# What a reason says the shopper did with the item it names, by their latest event on it
# (any other event: they looked at it).
_DID = {"purchase": "because you bought {}", "add_to_cart": "because you added {} to your cart"}
_LOOKED = "because you looked at {}"
POPULAR = "popular right now"


def _reasons_for(
    index: LoadedIndex | None,
    item_ids: Sequence[str],
    pool: Pool,
    titles: Mapping[str, str],
) -> list[str]:
    """For each item, "because you bought / added to your cart / looked at X": X is the
    shopper's item closest to it (the first of equals) among the trigger's and the most
    recent ones that have a title, in one matrix product for all of them. A
    reason never names an item by its id: without a titled item of the shopper's to
    name, it says the item is popular."""
    if index is None:
        return [POPULAR] * len(item_ids)
    known = [h for h in dict.fromkeys(pool.reason_items()) if h in index and titles.get(h)]
    if not known:
        return [POPULAR] * len(item_ids)
    scored = [i for i in item_ids if i in index]
    best: dict[str, str] = {}
    if scored:
        closeness = index.vectors(scored) @ index.vectors(known).T
        nearest = np.argmax(closeness, axis=1).tolist()
        best = {i: known[j] for i, j in zip(scored, nearest, strict=True)}
    return [
        _DID.get(pool.did.get(best[i], ""), _LOOKED).format(titles[best[i]])
        if i in best
        else POPULAR
        for i in item_ids
    ]


@dataclasses.dataclass(frozen=True)
class Pool:
    """The merged candidates for one shopper before the catalog is consulted."""

    candidates: list[Candidate]
    history: list[str]  # the shopper's items the model was asked with, most recent first
    banned: frozenset[str]  # bought, and the cart unless the rule is about it
    trigger_items: tuple[str, ...]
    did: Mapping[str, str] = dataclasses.field(default_factory=dict)  # item -> latest event type

    def head(self, n: int) -> Pool:
        """The pool with only its `n` best candidates."""
        if n >= len(self.candidates):
            return self
        return dataclasses.replace(self, candidates=self.candidates[:n])

    def reason_items(self) -> list[str]:
        """The shopper's items a reason may name (`REASON_ITEMS`)."""
        return list(dict.fromkeys([*self.trigger_items, *self.history[:REASON_ITEMS]]))

    def item_ids(self) -> list[str]:
        """Every item whose catalog entry `choose` needs: the trigger's and those reasons
        may name (for their titles), then the candidates."""
        return list(dict.fromkeys([*self.reason_items(), *(c.item_id for c in self.candidates)]))


@dataclasses.dataclass(frozen=True)
class PoolRequest:
    """One shopper's ask of `candidate_pools`: `k` items to fill after filtering,
    neighbours of `trigger_items`, the cart allowed only for rules about it."""

    shopper: ShopperView
    k: int
    trigger_items: Sequence[str] = ()
    allow_cart: bool = False


def candidate_pool(
    index: LoadedIndex | None,
    shopper: ShopperView,
    *,
    k: int,
    now: float,
    trigger_items: Sequence[str] = (),
    allow_cart: bool = False,
    trending: Callable[[], Sequence[tuple[str, float]]] = tuple,
) -> Pool:
    """`candidate_pools` for one shopper."""
    [pool] = candidate_pools(
        index, [PoolRequest(shopper, k, trigger_items, allow_cart)], now=now, trending=trending
    )
    return pool


def candidate_pools(
    index: LoadedIndex | None,
    requests: Sequence[PoolRequest],
    *,
    now: float,
    trending: Callable[[], Sequence[tuple[str, float]]] = tuple,
) -> list[Pool]:
    """Per request, the served model's items for the shopper's history (`_model_history`)
    and the FAISS neighbours of the trigger items, merged: enough to fill `k` after
    filtering. A shopper none of whose history items the index knows (new, or only new
    items) gets what is trending now (`trending()`: the live counters, best first)
    instead of the model's build-time popularity, as does every shopper when there is no
    index. The index is asked once for the whole batch (`recommend_many`,
    `similar_many`)."""
    banned = [
        set(r.shopper.purchased) | (set() if r.allow_cart else set(r.shopper.cart))
        for r in requests
    ]
    excludes = [b | set(r.trigger_items) for r, b in zip(requests, banned, strict=True)]
    # the index leaves `excludes` out itself: asking for more by their number (a loyal
    # shopper's thousands of purchases) only made every answer of the batch longer
    overs = [4 * r.k for r in requests]
    found = [_Found() for _ in requests]
    if index is not None:
        found = _from_index(index, requests, excludes, overs, now)
    out = []
    for r, b, f in zip(requests, banned, found, strict=True):
        if f.cold:
            f.candidates += [Candidate(item, score, POPULAR, "trending")
                             for item, score in trending()[: 4 * r.k]]  # fmt: skip
        did: dict[str, str] = {}
        for e in r.shopper.recent:  # newest first: the first entry per item is the latest
            if e.get("item_id"):
                did.setdefault(e["item_id"], e["type"])
        out.append(Pool(_merge(f.candidates), f.history, frozenset(b), tuple(r.trigger_items), did))
    return out


@dataclasses.dataclass
class _Found:
    """What the index gave one request."""

    candidates: list[Candidate] = dataclasses.field(default_factory=list)
    history: list[str] = dataclasses.field(default_factory=list)  # the items asked with
    cold: bool = True  # the model knows none of them: trending fills in


def _from_index(
    index: LoadedIndex,
    requests: Sequence[PoolRequest],
    excludes: Sequence[set[str]],
    overs: Sequence[int],
    now: float,
) -> list[_Found]:
    """Per request, the model's candidates and the neighbours of the trigger items."""
    found = [_Found() for _ in requests]
    asks: list[int] = []  # the requests the model scores
    weighted: list[tuple[list[str], list[float]]] = []
    for n, r in enumerate(requests):
        history, weights = _model_history(index, r.shopper, now)
        found[n].history = history
        if any(index.is_built(h) for h in history):  # an overlay item does not fold in
            asks.append(n)
            weighted.append((history, weights))
            found[n].cold = False
    scored = index.recommend_many(weighted, [overs[n] for n in asks], [excludes[n] for n in asks])
    for n, items in zip(asks, scored, strict=True):
        found[n].candidates += [Candidate(item, score, "", "model") for item, score in items]
    neighbours = index.similar_many(
        [(r.trigger_items, ex) for r, ex in zip(requests, excludes, strict=True)], overs
    )
    for f, per_trigger in zip(found, neighbours, strict=True):
        for similar in per_trigger:
            f.candidates += [Candidate(item, score, "", "neighbour") for item, score in similar]
    return found


def _model_history(
    index: LoadedIndex, shopper: ShopperView, now: float
) -> tuple[list[str], list[float]]:
    """The shopper's items and weights as `index`'s model was evaluated with them: the
    accumulated history (`indexing.history`), or for a version built before it the
    latest `history_events` events with an item (the offline log has none without)."""
    if index.history_events is None:
        return item_weights(shopper.history, now, index.history_weighting, index.history_items)
    events = [
        (r["item_id"], r["type"], float(r["ts"])) for r in shopper.recent if r.get("item_id")
    ][: index.history_events]
    return recent_item_weights(events, now, index.history_weighting, index.history_items)


def choose(
    index: LoadedIndex | None,
    pool: Pool,
    facts: Mapping[str, Mapping[str, str]],
    *,
    k: int,
    include_trigger_items: bool = False,
    max_category_share: float = 0.67,
) -> list[Candidate]:
    """Up to `k` items of `pool`, best first, each with its reason. `facts` are the
    catalog entries of `pool.item_ids()`: items it does not know or that are out of
    stock (`stock == "0"`) are skipped. `include_trigger_items` puts the rule's own items
    first (the cart, the item whose price dropped); otherwise trigger items only seed
    neighbours."""
    trigger_items = pool.trigger_items
    unavailable = {i for i in pool.item_ids() if i not in facts or facts[i].get("stock") == "0"}
    # `facts` may hold a whole batch's items: look up only this pool's
    categories = {i: facts[i].get("category", "") for i in pool.item_ids() if i in facts}
    chosen: list[Candidate] = []
    if include_trigger_items:
        for item in trigger_items:
            if item not in unavailable:
                chosen.append(Candidate(item, math.inf, "you showed interest in it", "trigger"))

    seen = set(trigger_items)
    per_category: dict[str, int] = {}
    cap = max(1, math.floor(max_category_share * k))
    for c in chosen:
        cat = categories.get(c.item_id, "")
        per_category[cat] = per_category.get(cat, 0) + 1
    for cand in pool.candidates:
        if len(chosen) >= k:
            break
        if cand.item_id in pool.banned or cand.item_id in seen or cand.item_id in unavailable:
            continue
        cat = categories.get(cand.item_id, "")
        if cat and per_category.get(cat, 0) >= cap:
            continue
        seen.add(cand.item_id)
        per_category[cat] = per_category.get(cat, 0) + 1
        chosen.append(cand)
    chosen = chosen[:k]
    unexplained = [c.item_id for c in chosen if not c.reason]
    titles = {h: facts[h].get("title", "") for h in pool.reason_items() if h in facts}
    reasons = iter(_reasons_for(index, unexplained, pool, titles))
    return [c if c.reason else c._replace(reason=next(reasons)) for c in chosen]


def _merge(pool: Sequence[Candidate]) -> list[Candidate]:
    """One entry per item, keeping the source order's priority: model scores first, then
    neighbours (ranked by similarity), then trending."""
    order = {"model": 0, "neighbour": 1, "trending": 2}
    best: dict[str, Candidate] = {}
    for cand in pool:
        current = best.get(cand.item_id)
        if current is None or (order[cand.source], -cand.score) < (
            order[current.source],
            -current.score,
        ):
            best[cand.item_id] = cand
    return sorted(best.values(), key=lambda c: (order[c.source], -c.score, c.item_id))
