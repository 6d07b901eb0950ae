"""A loaded, verified artifact answering lookups: `LoadedIndex`.

Everything answers item ids and scores only; business filtering (stock, consent, caps)
belongs to the caller. Unknown item ids in a query are ignored (a brand-new item is not
an error on the hot path); `row` and `vector` raise `UnknownItemError` for them.

The built rows are read-only after load. Two things change without a rebuild: the blocked
set (`block` / `unblock`: sold out, withdrawn), which removes items from every later
answer, and the overlay (`add_items`: items added to the catalog after the build, see
`indexing.overlay`), which adds them to every later answer. Both are replaced, never
changed in place, so a lookup running in another thread sees one state or the other; the
changes themselves come from one thread at a time. One per process. The one table that
lookups change in place is the neighbour rankings kept per item (`_ranked`): single dict
operations, each whole under the GIL, on a table replaced whenever blocking changes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from indexing.attributes import AttributeMeans
from indexing.blend import Blend, BlendWeights
from indexing.errors import UnknownItemError
from indexing.history import served_history_events
from indexing.knn import CATALOGUE_PASS_SHARE
from indexing.matrix import Weighting
from indexing.neighbours import Neighbours
from indexing.overlay import OVERLAY_MAX_ITEMS, Overlay, merge
from indexing.ranking import top_indices

__all__ = ["FULL_SCORE_MAX_ITEMS", "LoadedIndex", "Scored"]

#: Catalogs up to this size are scored in full by `recommend` (exactly what the offline
#: evaluation measures); larger ones score a candidate set (see `recommend`).
FULL_SCORE_MAX_ITEMS = 20_000
#: `similar_many` searches this many times the largest k past it for the queries'
#: exclusions; a query that needs more is asked again alone
_SHARED_EXCLUSION_SLACK = 2
#: Items whose neighbour ranking is kept for their next query at most (`LoadedIndex._ranked`),
#: and how deep one is kept (12 bytes a neighbour: at most 3 kB an item; a rule of 10 items
#: asks 41-121 deep); the table is emptied when full
_NEAR_CACHE_MAX = 8192
_NEAR_KEPT_MAX = 256
_CANDIDATES_PER_SOURCE = 200

Scored = list[tuple[str, float]]


class _Ranking(NamedTuple):
    """An item's nearest built rows (-1 past the last found) and their cosine scores, best
    first, blocked rows left out; `whole`: the search went through the whole catalog."""

    rows: npt.NDArray[np.int64]
    scores: npt.NDArray[np.float32]
    whole: bool


def _sorted_set(codes: npt.NDArray[np.intp], n: int) -> npt.NDArray[np.intp]:
    """`np.unique(codes)` for codes below `n`: for a long history (200 items x M
    neighbours each) a mask over the catalogue is cheaper than unique's sort."""
    if codes.shape[0] * CATALOGUE_PASS_SHARE < n:
        return np.unique(codes)
    member = np.zeros(n, dtype=bool)
    member[codes] = True
    return np.flatnonzero(member)


class LoadedIndex:
    """Item table + neighbour search + served scoring of one artifact version.

    item_ids: (n,) ids; factors: float32 (n, d) raw ALS factors (may be a memory map);
    norms: float32 (n,); cold: bool (n,); blend: the served `Blend`; neighbours: a
    `Neighbours` over the unit vectors factors / norms, rows aligned with item_ids;
    attribute_means: the build's category and brand means (None for an artifact written
    before they were stored: such an index takes overlay items only with given vectors);
    overlay_max: the overlay's cap. `len()` and `row` count built rows only.
    """

    def __init__(
        self,
        *,
        version: str,
        manifest: Mapping[str, Any],
        item_ids: Sequence[str],
        factors: npt.NDArray[np.float32],
        norms: npt.NDArray[np.float32],
        cold: npt.NDArray[np.bool_],
        blend: Blend,
        neighbours: Neighbours,
        attribute_means: AttributeMeans | None = None,
        overlay_max: int = OVERLAY_MAX_ITEMS,
    ):
        self.version = version
        self.manifest = dict(manifest)
        self.item_ids: tuple[str, ...] = tuple(item_ids)
        self._ids = np.array(self.item_ids, dtype=object)
        self._row = {item_id: row for row, item_id in enumerate(self.item_ids)}
        self.factors = factors
        self.norms = norms
        # a plain ndarray view of the (possibly memory-mapped) factors: np.memmap indexing
        # costs microseconds per call on the hot path; the view shares the same pages
        self._factors = np.asarray(factors)
        self._norms = np.asarray(norms, dtype=np.float32)
        safe = np.where(norms > 0, norms, 1.0).astype(np.float32)
        self._inv_norms = (1.0 / safe).astype(np.float32)
        self.cold = cold
        self.blend = blend
        self.neighbours = neighbours
        self.dim = int(factors.shape[1])
        self.attribute_means = attribute_means
        self.overlay_max = overlay_max
        self._overlay = Overlay.empty(self.dim)
        self._blocked_ids: frozenset[str] = frozenset()  # any id, known now or added later
        self._blocked: frozenset[int] = frozenset()  # their built rows
        # built row -> its neighbour ranking (`_ranked`), replaced whenever blocking changes
        self._near: dict[int, _Ranking] = {}
        top = np.argsort(-blend.popularity, kind="stable")[:_CANDIDATES_PER_SOURCE]
        self._popular = top.astype(np.intp)

    # --- the item table -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.item_ids)

    def __contains__(self, item_id: object) -> bool:
        """True for a built row and for an overlay item."""
        return item_id in self._row or item_id in self._overlay.row

    def is_built(self, item_id: str) -> bool:
        """True for a row of the build, which fold-in, KNN and popularity know (an overlay
        item is not one: a shopper's history of only overlay items folds in to nothing)."""
        return item_id in self._row

    def row(self, item_id: str) -> int:
        """The built row of `item_id`; raises `UnknownItemError` (an overlay item too)."""
        try:
            return self._row[item_id]
        except KeyError:
            raise UnknownItemError(item_id) from None

    def rows(self, item_ids: Iterable[str]) -> npt.NDArray[np.intp]:
        """Int (m,): rows of the known ids among `item_ids`, in order (unknown skipped)."""
        get = self._row.get
        return np.array([r for r in (get(i) for i in item_ids) if r is not None], dtype=np.intp)

    def is_cold(self, item_id: str) -> bool:
        """True when the item's vector comes from its attributes, not interactions (every
        overlay item)."""
        if item_id in self._overlay.row:
            return True
        return bool(self.cold[self.row(item_id)])

    def vector(self, item_id: str) -> npt.NDArray[np.float32]:
        """Float32 (d,): the item's unit vector (the one the index holds)."""
        one: npt.NDArray[np.float32] = self.vectors([item_id])[0]
        return one

    def vectors(self, item_ids: Sequence[str]) -> npt.NDArray[np.float32]:
        """Float32 (n, d): each item's unit vector, in one gather (every id must be known,
        built or overlay; a zero vector stays zero)."""
        over = self._overlay
        if not len(over) or not any(i in over.row for i in item_ids):
            return self._built_vectors([self.row(i) for i in item_ids])
        out = np.empty((len(item_ids), self.dim), dtype=np.float32)
        built = [p for p, i in enumerate(item_ids) if i not in over.row]
        out[built] = self._built_vectors([self.row(item_ids[p]) for p in built])
        extra = [p for p, i in enumerate(item_ids) if i in over.row]
        out[extra] = over.unit[[over.row[item_ids[p]] for p in extra]]
        return out

    def _built_vectors(self, rows_list: list[int]) -> npt.NDArray[np.float32]:
        rows = np.array(rows_list, dtype=np.intp)
        norms = self._norms[rows]
        norms[norms <= 0] = 1.0
        unit: npt.NDArray[np.float32] = self._factors[rows].astype(np.float32, copy=False)
        return unit / norms[:, None]

    # --- items added after the build ----------------------------------------------------
    @property
    def overlay(self) -> tuple[str, ...]:
        """The ids of the overlay items, in the order they were first added."""
        return self._overlay.item_ids

    def attribute_vector(
        self, category: str = "", brand: str = ""
    ) -> npt.NDArray[np.float32] | None:
        """The raw factor the build would give a new item of `category` / `brand`: the mean
        of this index's warm items of that category, else brand (`AttributeMeans`). None
        when neither has one, or the artifact stores no means."""
        if self.attribute_means is None:
            return None
        return self.attribute_means.vector(category, brand)

    def add_items(self, item_ids: Sequence[str], factors: npt.NDArray[np.float32]) -> list[str]:
        """Put items the build does not know into every later answer, as cold items with raw
        factors `factors` (float32 (n, d), e.g. `attribute_vector`), without copying the
        built arrays. Adding an overlay id again replaces its vector; built ids are skipped
        (the build's vector stands); past `overlay_max` items new ids are refused. A blocked
        id stays blocked. Returns the ids added or replaced."""
        fresh = [p for p, i in enumerate(item_ids) if i not in self._row]
        rows = np.asarray(factors, dtype=np.float32).reshape(len(item_ids), self.dim)
        self._overlay, taken = self._overlay.with_items(
            [item_ids[p] for p in fresh], rows[fresh], self.overlay_max
        )
        return taken

    # --- exclusions without a rebuild ---------------------------------------------------
    @property
    def blocked(self) -> frozenset[str]:
        return self._blocked_ids

    def block(self, item_ids: Iterable[str]) -> None:
        """Leave these items out of every later answer (sold out, withdrawn); an id not known
        yet is remembered, and stays out once added to the overlay."""
        ids = frozenset(item_ids)
        rows = self.rows(ids).tolist()
        self._blocked_ids = self._blocked_ids | ids
        self._blocked = self._blocked | frozenset(rows)
        self.neighbours.block(rows)
        # once searches leave them out: a lookup holding the old rankings keeps what it
        # finds there; one taking the new dict searches with them blocked
        self._near = {}

    def unblock(self, item_ids: Iterable[str]) -> None:
        ids = frozenset(item_ids)
        rows = self.rows(ids).tolist()
        self._blocked_ids = self._blocked_ids - ids
        self._blocked = self._blocked - frozenset(rows)
        self.neighbours.unblock(rows)
        self._near = {}

    def _overlay_banned(self, over: Overlay, item_ids: Collection[str]) -> set[int]:
        """Overlay rows of `item_ids` and of blocked ids."""
        return set(over.rows(item_ids)) | set(over.rows(self._blocked_ids))

    # --- neighbour search ---------------------------------------------------------------
    def _answer(self, scores: npt.NDArray[np.float32], rows: npt.NDArray[np.int64]) -> list[Scored]:
        out: list[Scored] = []
        ids = self._ids
        for srow, rrow in zip(scores, rows, strict=True):
            keep = rrow >= 0
            out.append(list(zip(ids[rrow[keep]].tolist(), srow[keep].tolist(), strict=True)))
        return out

    def search(
        self, vectors: npt.NDArray[np.float32], k: int = 10, exclude: Collection[str] = ()
    ) -> list[Scored]:
        """Per query row of `vectors` (float32 (n, d) or (d,)), the k items with the highest
        inner product (cosine for unit queries), skipping `exclude` and blocked items."""
        over = self._overlay
        ex = set(self.rows(exclude).tolist())
        scores, rows = self.neighbours.search(vectors, k, ex)
        out = self._answer(scores, rows)
        if not len(over):
            return out
        queries = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        extra = over.search(queries, k, self._overlay_banned(over, exclude))
        return [merge(a, b, k) for a, b in zip(out, extra, strict=True)]

    def similar(
        self, item_ids: Sequence[str], k: int = 10, exclude: Collection[str] = ()
    ) -> list[Scored]:
        """Per item of `item_ids` (built or overlay), its k most similar items (never
        itself), skipping `exclude` and blocked items. An unknown id answers an empty list."""
        get = self._row.get
        over = self._overlay
        ex = set(self.rows(exclude).tolist()) if exclude else set()
        rows = [get(i) for i in item_ids]
        built = [r for r in rows if r is not None]
        near = iter(self._near_many(built, [k] * len(built), [ex] * len(built)))
        out = [next(near) if r is not None else [] for r in rows]
        if not len(over):
            return out
        # an overlay item's built neighbours: searched each time (it has no built row to
        # cache under, and few shoppers ask for a new item's neighbours)
        o_pos = [p for p, i in enumerate(item_ids) if i in over.row]
        o_rows = [over.row[item_ids[p]] for p in o_pos]
        ids = self.item_ids
        if o_rows:
            scores, found = self.neighbours.search(over.factors[o_rows], k, ex)
            scores *= over.inv_norms[o_rows][:, None]
            for p, srow, rrow in zip(o_pos, scores.tolist(), found.tolist(), strict=True):
                out[p] = [(ids[r], s) for r, s in zip(rrow, srow, strict=True) if r >= 0][:k]
        # then every query's overlay neighbours, merged in by score
        positions = [p for p, r in enumerate(rows) if r is not None] + o_pos
        if not positions:
            return out
        queries = np.vstack([self._factors[built], over.factors[o_rows]])
        inv = np.concatenate([self._inv_norms[built], over.inv_norms[o_rows]])
        banned = self._overlay_banned(over, exclude)
        extra = over.search(queries * inv[:, None], k, banned, [-1] * len(built) + o_rows)
        for pos, more in zip(positions, extra, strict=True):
            out[pos] = merge(out[pos], more, k)
        return out

    def similar_many(
        self, queries: Sequence[tuple[Sequence[str], Collection[str]]], k: Sequence[int]
    ) -> list[list[Scored]]:
        """`similar(item_ids, k, exclude)` for each query (item ids, exclude) with its k
        (the firings of a `track_batch`): the items not cached are searched at once, the
        exclusions applied per query, each answer as `similar` gives it. With an overlay
        each query goes through `similar`."""
        if len(self._overlay):
            return [
                self.similar(list(items), k=n, exclude=ex)
                for (items, ex), n in zip(queries, k, strict=True)
            ]
        get = self._row.get
        per_query = [[get(i) for i in item_ids] for item_ids, _ in queries]
        built: list[int] = []
        ks: list[int] = []
        exs: list[set[int]] = []
        for rows, (_, exclude), n in zip(per_query, queries, k, strict=True):
            ex = set(self.rows(exclude).tolist()) if exclude else set()
            for row in rows:
                if row is not None:
                    built.append(row)
                    ks.append(n)
                    exs.append(ex)
        near = iter(self._near_many(built, ks, exs))
        return [[next(near) if r is not None else [] for r in rows] for rows in per_query]

    def _near_many(self, rows: list[int], k: list[int], exclude: list[set[int]]) -> list[Scored]:
        """Per built row, its k nearest built items (never itself, nor the rows of its
        `exclude`, nor blocked ones), best first, with cosine scores: the first k left of
        the row's cached ranking (`_ranked`), or, where that runs out before the catalog
        does, a search of its own past the exclusions."""
        ids = self.item_ids
        out: list[Scored] = []
        most = max(k, default=0)
        slack = min(max((len(ex) for ex in exclude), default=0), _SHARED_EXCLUSION_SLACK * most)
        rankings = self._ranked(rows, most + 1 + slack)
        for row, ranking, n, ex in zip(rows, rankings, k, exclude, strict=True):
            head = n + 1 + len(ex)  # enough for k, whatever of itself and `ex` it holds
            kept = [
                (ids[r], s)
                for r, s in zip(
                    ranking.rows[:head].tolist(), ranking.scores[:head].tolist(), strict=True
                )
                if r >= 0 and r != row and r not in ex
            ][:n]
            if len(kept) < n and not ranking.whole:  # short: only where the catalog ended
                kept = self._near_alone(row, n, ex)
            out.append(kept)
        return out

    def _ranked(self, rows: list[int], depth: int) -> list[_Ranking]:
        """Per built row, its `depth` nearest rows (or all), best first, blocked rows left
        out: kept per row until the blocked set changes; the rows not kept, or kept less
        deep, searched at once, `depth` deep (a batch's largest k, the item itself and a
        little past it for exclusions: as deep as one search for the batch went before
        rankings were kept).

        An item's neighbours are asked for again and again (a bestseller's buyers), and
        each search scans the catalog (flat) or walks the graph (HNSW); with HNSW the
        ranking kept is the search's at that depth, the same for every later query."""
        cache = self._near  # taken before searching: see `block`
        count = self.neighbours.count
        fetch = min(depth, count)
        kept = [cache.get(r) for r in rows]
        kept = [None if got is None or len(got.rows) < fetch else got for got in kept]
        missing = list(dict.fromkeys(r for r, got in zip(rows, kept, strict=True) if got is None))
        if not missing:
            return kept  # type: ignore[return-value]
        scores, found = self.neighbours.search(self._factors[missing], fetch)
        if found[:, -1].min() < 0:  # a short answer, padded at its end with -1 and
            scores[found < 0] = -np.inf  # -FLT_MAX, which scaling would overflow
        scores *= self._inv_norms[missing][:, None]
        fresh = {r: _Ranking(found[n], scores[n], fetch == count) for n, r in enumerate(missing)}
        if len(cache) + len(fresh) > _NEAR_CACHE_MAX:
            cache.clear()
        keep = min(fetch, _NEAR_KEPT_MAX)  # a deeper query searches again
        if len(missing) == 1 and keep == fetch:  # its arrays are the one row's: kept as is
            cache.update(fresh)
        else:  # copied off the batch's arrays, which a view would keep alive
            cache.update(
                (r, _Ranking(got.rows[:keep].copy(), got.scores[:keep].copy(), keep == count))
                for r, got in list(fresh.items())[:_NEAR_CACHE_MAX]
            )
        return [got if got is not None else fresh[r] for r, got in zip(rows, kept, strict=True)]

    def _near_alone(self, row: int, k: int, exclude: set[int]) -> Scored:
        """`_near_many` for one row by a search of its own, past `exclude` (a loyal
        shopper's purchases can outnumber the ranking kept)."""
        scores, found = self.neighbours.search(self._factors[[row]], k + 1, exclude)
        scores[found < 0] = -np.inf
        scores *= self._inv_norms[row]
        ids = self.item_ids
        return [
            (ids[r], s)
            for r, s in zip(found[0].tolist(), scores[0].tolist(), strict=True)
            if r >= 0 and r != row
        ][:k]

    # --- shoppers -----------------------------------------------------------------------
    @property
    def history_weighting(self) -> Weighting:
        """How to weight a shopper's history for this version (type weights and the
        history half-life it was tuned with); see `indexing.history.item_weights`."""
        params = self.manifest["params"]
        return Weighting(
            dict(params["weighting"]["type_weights"]), params["history_half_life_days"]
        )

    @property
    def history_events(self) -> int | None:
        """None: the served model was evaluated with each shopper's accumulated history
        (`indexing.history`; also versions from before this field, which read every
        event); a number: with that many of the shopper's latest events
        (`recent_item_weights` over the worker's recent list). See
        `history.served_history_events`."""
        return served_history_events(self.manifest["params"])

    @property
    def history_items(self) -> int:
        """How many items of a shopper's history the served model was evaluated with (pass
        at most these; with the accumulated history, also the bound it assumed)."""
        return int(self.manifest["params"]["history_items"])

    def fold_in(
        self, item_ids: Sequence[str], weights: Sequence[float] | None = None
    ) -> npt.NDArray[np.float32]:
        """Float32 (d,) unit shopper vector from recent items and raw weights (type weight x
        decay, see docs/indexing.md). Unknown items are skipped; none known gives zeros."""
        rows, w = self._known(item_ids, weights)
        u = self.blend.fold_in(rows, w)
        norm = float(np.linalg.norm(u))
        return (u / norm).astype(np.float32) if norm > 0 else u

    def _known(
        self, item_ids: Sequence[str], weights: Sequence[float] | None
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
        get = self._row.get
        if weights is None:
            weights = [1.0] * len(item_ids)
        pairs = [(get(i), w) for i, w in zip(item_ids, weights, strict=True)]
        rows = np.array([r for r, _ in pairs if r is not None], dtype=np.intp)
        w = np.array([w for r, w in pairs if r is not None], dtype=np.float64)
        return rows, w

    def score(
        self,
        item_ids: Sequence[str],
        weights: Sequence[float] | None,
        candidates: Sequence[str],
        blend: BlendWeights | None = None,
    ) -> list[float]:
        """The served score of each of `candidates` (built or overlay) for a shopper whose
        recent items are `item_ids` with raw `weights`; NaN for an unknown candidate.

        Each signal is normalised by its maximum over candidates plus recent items (the recent
        items are scored, then left out of the answer). `recommend` normalises over the whole
        catalog (up to `FULL_SCORE_MAX_ITEMS`) or over its candidate set plus recent items, so
        the two agree exactly when those maxima agree — typically they sit on or next to
        the shopper's own items. An overlay candidate scores as `_with_overlay` says.
        """
        rows, w = self._known(item_ids, weights)
        over = self._overlay
        cand = [self._row.get(c) for c in candidates]
        known = np.array([c for c in cand if c is not None], dtype=np.intp)
        scored = np.concatenate([known, rows])
        values = self.blend.score(rows, w, scored, blend).astype(np.float64)
        unbuilt = [c for c, r in zip(candidates, cand, strict=True) if r is None]
        picks = np.array(over.rows(unbuilt), dtype=np.intp)
        values, extra = self._with_overlay(over, rows, w, scored, values, picks, blend)
        built, added = iter(values[: known.shape[0]].tolist()), iter(extra.tolist())
        return [
            next(built) if r is not None else next(added) if c in over.row else float("nan")
            for c, r in zip(candidates, cand, strict=True)
        ]

    def recommend(
        self,
        item_ids: Sequence[str],
        weights: Sequence[float] | None = None,
        k: int = 10,
        exclude: Collection[str] = (),
        blend: BlendWeights | None = None,
    ) -> Scored:
        """The served model's top k for a shopper from recent items and raw weights.

        Never returns the shopper's own recent items, `exclude` or blocked items. Catalogs
        up to `FULL_SCORE_MAX_ITEMS` are scored in full; larger ones score the union of the
        fold-in vector's 200 nearest items, the KNN neighbours of the recent items and the
        200 most popular recent items. Excluded items are dropped *after* scoring, because
        `Blend.score` normalises each signal by its maximum over the scored set — exactly
        as the offline evaluation scores every warm item, the shopper's own included.
        Every overlay item is scored too (`_with_overlay`) and competes on that score.
        """
        rows, w = self._known(item_ids, weights)
        banned = self._never(rows, exclude)
        n = len(self.item_ids)
        scored: npt.NDArray[np.intp] | None  # the rows scored (None: all, in order)
        if n <= FULL_SCORE_MAX_ITEMS:
            scored = None
            s = self.blend.score(rows, w, None, blend).astype(np.float64)
        else:
            parts = [self._popular]
            if rows.shape[0]:
                u = self.blend.fold_in(rows, w)
                _, near = self.neighbours.search(u[None, :], _CANDIDATES_PER_SOURCE, banned)
                parts.append(near[0][near[0] >= 0].astype(np.intp))
                sim = self.blend.similarity
                parts.extend(
                    sim.indices[sim.indptr[r] : sim.indptr[r + 1]].astype(np.intp)
                    for r in rows.tolist()
                )
            parts.append(rows)
            scored = _sorted_set(np.concatenate(parts), n)
            s = self.blend.score(rows, w, scored, blend).astype(np.float64)
        over = self._overlay
        if len(over):
            everyone = np.arange(len(over), dtype=np.intp)
            s, extra = self._with_overlay(over, rows, w, scored, s, everyone, blend)
        if scored is None:
            top = self._best(s, banned, k)
        else:
            if banned:
                keep = ~np.isin(scored, np.fromiter(banned, dtype=np.intp, count=len(banned)))
                scored, s = scored[keep], s[keep]
            top = self._top(scored, s, k)
        if not len(over):
            return top
        ours = self._overlay_banned(over, [*item_ids, *exclude])
        return merge(top, over.best(extra, k, ours), k)

    def recommend_many(
        self,
        histories: Sequence[tuple[Sequence[str], Sequence[float] | None]],
        k: Sequence[int],
        excludes: Sequence[Collection[str]],
    ) -> list[Scored]:
        """`recommend(item_ids, weights, k, exclude)` for each shopper (history, its k and
        exclude): a catalog scored in full without an overlay is scored for the whole
        batch as one matrix (`Blend.score_many`), each answer as `recommend` gives it up
        to the float rounding of a batched product; otherwise each goes through
        `recommend`."""
        n = len(self.item_ids)
        if len(self._overlay) or n > FULL_SCORE_MAX_ITEMS or len(histories) < 2:
            return [
                self.recommend(items, w, k=m, exclude=ex)
                for (items, w), m, ex in zip(histories, k, excludes, strict=True)
            ]
        known = [self._known(items, w) for items, w in histories]
        scores = self.blend.score_many(known)
        return [
            self._best(s, self._never(rows, ex), m)
            for (rows, _), m, ex, s in zip(known, k, excludes, scores, strict=True)
        ]

    def _never(self, rows: npt.NDArray[np.intp], exclude: Collection[str]) -> set[int]:
        """Built rows a shopper is never recommended: their own recent items (`rows`),
        `exclude` and the blocked items."""
        return set(rows.tolist()) | set(self.rows(exclude).tolist()) | self._blocked

    def _with_overlay(
        self,
        over: Overlay,
        rows: npt.NDArray[np.intp],
        w: npt.NDArray[np.float64],
        scored: npt.NDArray[np.intp] | None,
        values: npt.NDArray[np.float64],
        picks: npt.NDArray[np.intp],
        blend: BlendWeights | None,
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """The scores of rows `picks` of `over` beside `values`, `Blend.score`'s scores of
        built rows `scored` (None: every row), as if the picks were scored with them.

        An overlay item has no item-item weights and no recent buyers in the build, so its score
        is the MF term alone: ``w_mf * (u · y) / max |u · y|``, u the shopper's fold-in and y
        its raw factor, the maximum taken over the scored built rows and the picks together
        (zero for an empty history or w_mf = 0). When a pick holds that maximum, the built
        rows' MF terms are rescaled to it too, so every score sits on one scale. Returns the
        built scores (adjusted or as given) and the picks' scores.
        """
        weights = blend or self.blend.weights
        extra = np.zeros(picks.shape[0], dtype=np.float64)
        if not picks.shape[0] or not rows.shape[0] or not weights.mf:
            return values, extra
        u = self.blend.fold_in(rows, w)
        mf_built = (self._factors if scored is None else self._factors[scored]) @ u
        mf_extra = (over.factors[picks] @ u).astype(np.float64)
        top_built = float(np.abs(mf_built).max()) if mf_built.size else 0.0
        top = max(top_built, float(np.abs(mf_extra).max()))
        if top == 0:
            return values, extra
        if top > top_built > 0:
            values = values + weights.mf * (mf_built / top - mf_built / top_built)
        return values, weights.mf * mf_extra / top

    def _best(self, s: npt.NDArray[np.floating], banned: set[int], k: int) -> Scored:
        """The k best rows by `s` (a score for every row, overwritten at `banned`, which
        are left out), ties to the lower row: `_top` of the rows not banned, without
        gathering them."""
        if banned:  # below every score
            s[list(banned)] = -np.inf
        top = top_indices(s, min(k, s.shape[0] - len(banned)))
        return list(zip(self._ids[top].tolist(), s[top].tolist(), strict=True))

    def _top(self, cand: npt.NDArray[np.intp], s: npt.NDArray[np.float64], k: int) -> Scored:
        """The k best of `cand` (ascending rows) by score `s`, ties to the lower row."""
        top = top_indices(s, k)
        return list(zip(self._ids[cand[top]].tolist(), s[top].tolist(), strict=True))
