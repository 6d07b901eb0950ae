"""A shopper's history as the served model reads it: per-item accumulated weights.

The live worker keeps, per shopper, a bounded accumulator (`worker/store/lua/
apply_event.lua`): for each of the `max_items` most recently touched items, the latest
ts it was touched and, per event type, the count of its events and their decayed sum
``Σ 2 ** ((ts - HISTORY_EPOCH) / STATE_HALF_LIFE_S)``. Each event adds to its item's
sums; when a new item makes it one more than `max_items`, the item touched least
recently goes (smallest latest ts, ties to the smaller id: Redis's sorted-set order),
sums and all, so an item that comes back later starts from zero.

From that state any type weights and either history half-life of
`ACCUMULATED_HALF_LIVES` give the weights `Blend.score` expects, exactly, at read
time (`item_weights`):

- half-life None: ``Σ_type type_weight * count``;
- half-life `STATE_HALF_LIFE_DAYS`: ``Σ_type type_weight * decayed * 2 ** (-(now -
  HISTORY_EPOCH) / STATE_HALF_LIFE_S)`` = ``Σ type_weight * 0.5 ** (age / half_life)``.

Other half-lives cannot be recovered from these sums, so a model whose history reads
this state must use one of those two (`ModelParams` refuses others). The reference
frame: adding ``2 ** ((ts - epoch) / half_life)`` stays a finite double for ~250 years
either side of the 2020 epoch at a 90-day half-life, and a sorted set or a ``%.17g``
string keeps it exactly (the state stores it as such); the decay is applied once, when
read, never by rewriting the stored sums.

`ItemHistory` is the reference fold (one shopper, event by event, as the script);
`accumulated_histories` computes the same for every shopper of a log, in log order, for
the offline evaluation. The older view, a shopper's latest `max_events` events
(`shopper_histories`, `recent_item_weights`), still serves versions built with
`history_events` set.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from indexing.blend import shopper_histories
from indexing.events import EVENT_TYPES, EventLog
from indexing.matrix import SECONDS_PER_DAY, Weighting

__all__ = [
    "ACCUMULATED_HALF_LIVES",
    "HISTORY_EPOCH",
    "STATE_HALF_LIFE_DAYS",
    "STATE_HALF_LIFE_S",
    "AccumulatedHistories",
    "History",
    "HistoryEntry",
    "ItemHistory",
    "accumulated_histories",
    "decay_term",
    "item_weights",
    "model_histories",
    "served_history_events",
]

HISTORY_EPOCH = 1_577_836_800.0  # 2020-01-01T00:00:00Z
STATE_HALF_LIFE_DAYS = 90.0
STATE_HALF_LIFE_S = STATE_HALF_LIFE_DAYS * SECONDS_PER_DAY
#: The history half-lives a model reading the accumulated state may have.
ACCUMULATED_HALF_LIVES: tuple[float | None, ...] = (None, STATE_HALF_LIFE_DAYS)

_TYPE_ORDER = {name: code for code, name in enumerate(EVENT_TYPES)}


def _type_rank(name: str) -> int:
    """Where an event type's term goes in a weight's sum: `EVENT_TYPES` order, unknown
    types last."""
    return _TYPE_ORDER.get(name, len(_TYPE_ORDER))


def decay_term(ts: float) -> float:
    """What one event at `ts` adds to its (item, type) decayed sum: ``2 ** ((ts -
    HISTORY_EPOCH) / STATE_HALF_LIFE_S)`` (Python's float power: the worker and the
    offline evaluation both call this)."""
    return float(2.0 ** ((ts - HISTORY_EPOCH) / STATE_HALF_LIFE_S))


def _read_scale(now: float, half_life_days: float | None) -> float | None:
    """The factor turning a decayed sum into weights seen from `now`; None: use counts.
    Raises ValueError for a half-life the state cannot serve."""
    if half_life_days is None:
        return None
    if half_life_days != STATE_HALF_LIFE_DAYS:
        raise ValueError(
            f"a history half-life of {half_life_days} days cannot be read from the "
            f"accumulated state: use one of {ACCUMULATED_HALF_LIVES}"
        )
    return float(2.0 ** (-(now - HISTORY_EPOCH) / STATE_HALF_LIFE_S))


@dataclass
class HistoryEntry:
    """One item of a shopper's accumulated history: the latest ts it was touched and,
    per event type, [count, decayed sum] (see the module docstring)."""

    item_id: str
    last_ts: float
    sums: dict[str, list[float]] = field(default_factory=dict)

    def weight(self, type_weights: Mapping[str, float], scale: float | None) -> float:
        """The item's weight: ``Σ type_weight * (count if scale is None else decayed *
        scale)``, summed in `EVENT_TYPES` order (the offline sum's order)."""
        sums = self.sums
        # a loyal shopper's 200 items are weighed with every event they fire: an item of
        # one event type (most) skips the sort
        names = sums if len(sums) < 2 else sorted(sums, key=_type_rank)
        total = 0.0
        for name in names:
            count, decayed = sums[name]
            w = float(type_weights.get(name, 0.0))
            total += w * (count if scale is None else decayed * scale)
        return total


def item_weights(
    entries: Iterable[HistoryEntry],
    now: float,
    weighting: Weighting,
    max_items: int,
) -> tuple[list[str], list[float]]:
    """The weights `LoadedIndex.recommend` expects, from a shopper's accumulated history
    seen from `now`: items most recently touched first (ties: the larger id first, the
    reverse of the state's eviction order), those whose weight is <= 0 left out, at most
    `max_items`. Raises ValueError when `weighting.half_life_days` is not one of
    `ACCUMULATED_HALF_LIVES`."""
    scale = _read_scale(now, weighting.half_life_days)
    ids: list[str] = []
    weights: list[float] = []
    for entry in sorted(entries, key=lambda e: (e.last_ts, e.item_id), reverse=True):
        w = entry.weight(weighting.type_weights, scale)
        if w > 0:
            ids.append(entry.item_id)
            weights.append(w)
            if len(ids) == max_items:
                break
    return ids, weights


class ItemHistory:
    """The reference fold of one shopper's accumulated history (what `apply_event.lua`
    does per event, in Python): feed events in the order they are applied."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self.entries: dict[str, HistoryEntry] = {}

    def add(self, item_id: str, type_name: str, ts: float) -> None:
        entry = self.entries.get(item_id)
        if entry is None:
            entry = self.entries[item_id] = HistoryEntry(item_id, ts)
        else:
            entry.last_ts = max(entry.last_ts, ts)
        sums = entry.sums.setdefault(type_name, [0.0, 0.0])
        sums[0] += 1.0
        sums[1] += decay_term(ts)
        while len(self.entries) > self.max_items:
            oldest = min(self.entries.values(), key=lambda e: (e.last_ts, e.item_id))
            del self.entries[oldest.item_id]

    def weights(self, now: float, weighting: Weighting) -> tuple[list[str], list[float]]:
        return item_weights(self.entries.values(), now, weighting, self.max_items)


@dataclass(frozen=True)
class AccumulatedHistories:
    """Every shopper's accumulated history over a log (`accumulated_histories`), one row
    per (user, item, type) cell kept, sorted by user, then item, then type code.

    users, items: int (n,) codes of the log; types: int8 (n,) type codes; counts,
    decayed: float64 (n,) the sums; last: float64 (n,) the item's latest ts; rank:
    int64 (n,) the item id's rank in string order (ties of `last`)."""

    users: npt.NDArray[np.int64]
    items: npt.NDArray[np.int64]
    types: npt.NDArray[np.int8]
    counts: npt.NDArray[np.float64]
    decayed: npt.NDArray[np.float64]
    last: npt.NDArray[np.float64]
    rank: npt.NDArray[np.int64]
    max_items: int

    def weights(
        self, weighting: Weighting, as_of: float
    ) -> Mapping[int, tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]]:
        """Per user code: item codes and float32 weights, as `item_weights` gives them
        for the shopper's state seen from `as_of` (users with no item of positive
        weight get empty arrays). Raises ValueError as `item_weights`."""
        scale = _read_scale(as_of, weighting.half_life_days)
        per_type = np.array(
            [float(weighting.type_weights.get(name, 0.0)) for name in EVENT_TYPES],
            dtype=np.float64,
        )
        value = self.counts if scale is None else self.decayed * scale
        cell = per_type[self.types] * value
        # one (user, item) per run of rows: sum its types in order, as HistoryEntry.weight
        starts = np.flatnonzero(
            np.r_[True, (self.users[1:] != self.users[:-1]) | (self.items[1:] != self.items[:-1])]
        )
        group = np.repeat(np.arange(starts.shape[0]), np.diff(np.r_[starts, cell.shape[0]]))
        total = np.zeros(starts.shape[0], dtype=np.float64)
        for t in range(len(EVENT_TYPES)):  # type order within an item: the sums' order
            sel = self.types == t
            np.add.at(total, group[sel], cell[sel])
        users, items = self.users[starts], self.items[starts]
        last, rank = self.last[starts], self.rank[starts]
        keep = total > 0
        users, items, last, rank, total = (
            users[keep], items[keep], last[keep], rank[keep], total[keep]
        )  # fmt: skip
        order = np.lexsort((-rank, -last, users))
        # every shopper of the log has an entry, as `shopper_histories` gives one: the
        # evaluation looks each test shopper up (one who only searched weighs nothing)
        out: dict[int, tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]] = {
            u: (np.zeros(0, np.intp), np.zeros(0, np.float32))
            for u in np.unique(self.users).tolist()
        }
        bounds = np.flatnonzero(np.diff(users[order])) + 1
        for chunk in np.split(order, bounds):
            if chunk.size == 0:
                continue
            chunk = chunk[: self.max_items]
            out[int(users[chunk[0]])] = (
                items[chunk].astype(np.intp),
                total[chunk].astype(np.float32),
            )
        return out


def accumulated_histories(log: EventLog, max_items: int) -> AccumulatedHistories:
    """Every shopper's accumulated history after `log`'s events, applied in log order
    (the order a worker fed by this log would apply them): `ItemHistory` for each user,
    computed in one pass over the log plus numpy sums."""
    n = len(log)
    names = np.asarray(log.item_ids)
    rank_of_code = np.empty(len(log.item_ids), dtype=np.int64)
    rank_of_code[np.argsort(names, kind="stable")] = np.arange(len(log.item_ids))
    order = np.lexsort((np.arange(n), log.users))
    users_sorted = log.users[order]
    bounds = np.flatnonzero(np.diff(users_sorted)) + 1
    items_l = log.items[order].tolist()
    ts_l = log.ts[order].tolist()
    rank_l = rank_of_code[log.items[order]].tolist()
    # kept_pos[k]: event k (in `order`) is in its item's sums at the end (the item is
    # kept, and the event came at or after the item last entered)
    kept_pos = np.zeros(n, dtype=bool)
    lo = 0
    for hi in [*bounds.tolist(), n]:
        last: dict[int, float] = {}
        entered: dict[int, int] = {}
        heap: list[tuple[float, int, int]] = []
        for k in range(lo, hi):
            item, ts = items_l[k], ts_l[k]
            current = last.get(item)
            if current is None:
                last[item] = ts
                entered[item] = k
                heapq.heappush(heap, (ts, rank_l[k], item))
                if len(last) > max_items:
                    while True:  # pop stale heap entries until the least recent item
                        t0, _, i0 = heapq.heappop(heap)
                        if last.get(i0) == t0:
                            del last[i0], entered[i0]
                            break
            elif ts > current:
                last[item] = ts
                heapq.heappush(heap, (ts, rank_l[k], item))
        for k in range(lo, hi):
            start = entered.get(items_l[k])
            if start is not None and k >= start:
                kept_pos[k] = True
        lo = hi
    idx = order[kept_pos]  # kept events, by user then log position
    users = log.users[idx].astype(np.int64)
    items = log.items[idx].astype(np.int64)
    types = log.types[idx].astype(np.int8)
    terms = np.array([decay_term(t) for t in log.ts[idx].tolist()], dtype=np.float64)
    # cells (user, item, type); bincount adds each cell's terms in the order given, the
    # log's, as the script adds them
    key = (users * len(log.item_ids) + items) * len(EVENT_TYPES) + types
    uniq, inv = np.unique(key, return_inverse=True)
    counts = np.bincount(inv, minlength=uniq.shape[0]).astype(np.float64)
    decayed = np.bincount(inv, weights=terms, minlength=uniq.shape[0]).astype(np.float64)
    last_ts = np.full(uniq.shape[0], -np.inf)
    np.maximum.at(last_ts, inv, log.ts[idx])
    cell_users = uniq // (len(log.item_ids) * len(EVENT_TYPES))
    cell_items = (uniq // len(EVENT_TYPES)) % len(log.item_ids)
    cell_types = (uniq % len(EVENT_TYPES)).astype(np.int8)
    # an item's latest ts over all its types
    pair = cell_users * len(log.item_ids) + cell_items
    pair_uniq, pair_inv = np.unique(pair, return_inverse=True)
    pair_last = np.full(pair_uniq.shape[0], -np.inf)
    np.maximum.at(pair_last, pair_inv, last_ts)
    return AccumulatedHistories(
        users=cell_users,
        items=cell_items,
        types=cell_types,
        counts=counts,
        decayed=decayed,
        last=pair_last[pair_inv],
        rank=rank_of_code[cell_items],
        max_items=max_items,
    )


def served_history_events(params: Mapping[str, object]) -> int | None:
    """The `history_events` a version is served with, from its manifest's params: the
    value written (None: the accumulated history). A version from before the field fed
    its evaluation every event, and is served from the accumulated history too, unless
    its history half-life is one the state cannot serve (a build with parameters given
    by hand): then from its latest `history_items` events on the recent list, as workers
    served it before the state existed (their recent list then held 50 events,
    `history_items`' default), rather than refusing a version that served before."""
    if "history_events" in params:
        value = params["history_events"]
        return None if value is None else int(str(value))
    half_life = params.get("history_half_life_days")
    if (None if half_life is None else float(str(half_life))) in ACCUMULATED_HALF_LIVES:
        return None
    return int(str(params.get("history_items", 50)))


History = Mapping[int, tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]]


def model_histories(
    log: EventLog,
    as_of: float,
    weightings: Sequence[Weighting],
    max_items: int,
    max_events: int | None,
) -> list[History]:
    """Per weighting of `weightings`: each shopper's history as a model with these
    `history_items` / `history_events` reads it, seen from `as_of` — the accumulated
    state (`max_events` None, computed once for every weighting) or the latest
    `max_events` events (`shopper_histories`, versions built before the state)."""
    if max_events is not None:
        return [shopper_histories(log, w, as_of, max_items, max_events) for w in weightings]
    state = accumulated_histories(log, max_items)
    return [state.weights(w, as_of) for w in weightings]
