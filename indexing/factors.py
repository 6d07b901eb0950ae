"""Implicit-feedback matrix factorisation (Hu, Koren & Volinsky ALS) and fold-in.

Training uses `implicit`'s CPU conjugate-gradient ALS: it is the reference and ~3x faster
than a plain numpy CG ALS on this machine kind (docs/indexing.md, "Model and served
scoring"), so we do not keep our own. Confidence of a cell with raw weight r (see
`indexing.matrix`) is ``c = 1 + alpha * log1p(r)``; `implicit` gets `c` directly with its
own alpha at 1.

Determinism: explicit seed, float32, C-contiguous input, CPU only, BLAS limited to one
thread for the duration of the fit (which also silences implicit's OpenBLAS warning). Each
user/item solve is independent given the other side, so `num_threads` does not change the
result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

__all__ = ["AlsParams", "Factors", "FoldIn", "confidence", "gram_matrix", "train_als"]


@dataclass(frozen=True)
class AlsParams:
    """ALS hyperparameters. `regularization` is the plain L2 weight (not scaled by counts).

    Defaults: chosen on the Online Retail validation split (see docs/indexing.md).
    """

    factors: int = 32
    regularization: float = 0.05
    alpha: float = 1.0
    iterations: int = 15
    seed: int = 0
    num_threads: int = 1

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Factors:
    """Trained factors: users float32 (n_users, d), items float32 (n_items, d), C-contiguous."""

    users: npt.NDArray[np.float32]
    items: npt.NDArray[np.float32]
    params: AlsParams


def confidence(raw: sp.csr_matrix, alpha: float) -> sp.csr_matrix:
    """CSR float32 of ``1 + alpha * log1p(r)`` on the stored cells of `raw` (same pattern)."""
    out = sp.csr_matrix(raw, dtype=np.float32, copy=True)
    out.data = (1.0 + alpha * np.log1p(out.data)).astype(np.float32)
    return out


def train_als(raw: sp.csr_matrix, params: AlsParams) -> Factors:
    """Fit ALS on a users x items raw-weight matrix (CSR, see `interaction_matrix`).

    Users or items without any cell get whatever the solver leaves (near-zero vectors);
    callers drop items without interactions from the index.
    """
    from implicit.cpu.als import AlternatingLeastSquares

    conf = confidence(raw, params.alpha)
    conf.sort_indices()
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=params.factors,
            regularization=params.regularization,
            alpha=1.0,
            dtype=np.float32,
            use_cg=True,
            iterations=params.iterations,
            calculate_training_loss=False,
            num_threads=params.num_threads,
            random_state=params.seed,
        )
        model.fit(conf, show_progress=False)
    users = np.ascontiguousarray(model.user_factors, dtype=np.float32)
    items = np.ascontiguousarray(model.item_factors, dtype=np.float32)
    return Factors(users=users, items=items, params=params)


def gram_matrix(
    factors: npt.NDArray[np.float32], rows: npt.NDArray[np.bool_] | None = None
) -> npt.NDArray[np.float64]:
    """Float64 (d, d): YᵀY over `rows` (bool (n,), default all), in 64k-row chunks."""
    d = factors.shape[1]
    out = np.zeros((d, d), dtype=np.float64)
    step = 65_536
    for start in range(0, factors.shape[0], step):
        y = np.asarray(factors[start : start + step], dtype=np.float64)
        if rows is not None:
            y = y[rows[start : start + step]]
        out += y.T @ y
    return out


class FoldIn:
    """A shopper vector from a few items and weights, with the item factors held fixed.

    Solves the ALS user step exactly: ``(S + Σ (c_i - 1) y_i y_iᵀ) u = Σ c_i y_i`` with
    ``S = YᵀY + λI`` (precomputed once, float64 (d, d), with its inverse) and ``c_i = 1 +
    alpha * log1p(w_i)``. A history of L <= d/2 items is a rank-L change of S, solved by
    the Woodbury identity in an L x L system (O(L d² + L³)); a longer one solves the
    d x d system (O(L d² + d³)). Both are exact; their float rounding differs, within
    what the direct solve's own error is for S's condition number.
    """

    def __init__(
        self,
        item_factors: npt.NDArray[np.float32],
        regularization: float,
        alpha: float,
        *,
        trained_rows: npt.NDArray[np.bool_] | None = None,
        gram: npt.NDArray[np.float64] | None = None,
    ):
        # item_factors is kept by reference (it may be a read-only memory map shared by
        # processes), as a plain ndarray view: np.memmap's indexing costs ~1 us a call;
        # only the gathered rows are cast to float64 per call.
        self._y = np.asarray(item_factors)
        self.dim = int(item_factors.shape[1])
        self._alpha = float(alpha)
        if gram is None:
            gram = gram_matrix(item_factors, trained_rows)
        self.gram = np.asarray(gram, dtype=np.float64)
        self._system = self.gram + regularization * np.eye(self.dim)
        try:
            self._inverse = np.linalg.inv(self._system)  # S⁻¹, symmetric
            self._low_rank_max = self.dim // 2  # beyond it the L x L system costs more
        except np.linalg.LinAlgError:  # λ = 0 over a rank-deficient gram: solve directly
            self._inverse = np.zeros_like(self._system)
            self._low_rank_max = 0

    def __call__(
        self, rows: npt.NDArray[np.intp], weights: npt.NDArray[np.floating] | None = None
    ) -> npt.NDArray[np.float32]:
        """Float32 (d,) user vector for item rows `rows` (int (n,)) with raw `weights` (n,).

        Weights default to 1 each; rows with weight <= 0 are ignored. Returns zeros when no
        row remains (the caller falls back to popularity).
        """
        rows = np.asarray(rows, dtype=np.intp)
        w = np.ones(rows.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
        keep = w > 0
        if not keep.all():
            rows, w = rows[keep], w[keep]
        if rows.shape[0] == 0:
            return np.zeros(self.dim, dtype=np.float32)
        c = self._alpha * np.log1p(w)  # c_i - 1
        ys = np.asarray(self._y[rows], dtype=np.float64)
        b = ys.T @ (c + 1.0)
        if rows.shape[0] > self._low_rank_max or not (c > 0).all():
            return np.linalg.solve(self._system + (ys.T * c) @ ys, b).astype(np.float32)
        # Woodbury: (S + YᵀCY)⁻¹ = S⁻¹ - S⁻¹Yᵀ (C⁻¹ + YS⁻¹Yᵀ)⁻¹ YS⁻¹, C = diag(c_i - 1)
        z = ys @ self._inverse  # Y S⁻¹
        v = self._inverse @ b  # S⁻¹ b
        m = z @ ys.T + np.diag(1.0 / c)
        u: npt.NDArray[np.float64] = v - z.T @ np.linalg.solve(m, ys @ v)
        return u.astype(np.float32)

    def batch(
        self, rows: npt.NDArray[np.intp], weights: npt.NDArray[np.floating]
    ) -> npt.NDArray[np.float64]:
        """Float64 (n, d): one user vector per row of `rows` / `weights` (both (n, L), padded
        with weight 0), each as `__call__` gives it, up to float rounding: the batched
        scoring's and the offline evaluation's path."""
        rows = np.asarray(rows, dtype=np.intp)
        w = np.asarray(weights, dtype=np.float64)
        on = w > 0
        counts = on.sum(axis=1)
        out = np.zeros((rows.shape[0], self.dim), dtype=np.float64)
        c = np.where(on, self._alpha * np.log1p(np.where(on, w, 0.0)), 0.0)  # c_i - 1
        # a row whose every weight gives c_i > 1 takes the Woodbury path (as `__call__`)
        low = (counts > 0) & (counts <= self._low_rank_max) & ((c > 0) | ~on).all(axis=1)
        high = (counts > 0) & ~low
        for group in (low, high):
            if not group.any():
                continue
            width = int(counts[group].max())
            # the kept entries of each row first, so that `width` columns hold them all
            order = np.argsort(~on[group], axis=1, kind="stable")[:, :width]
            kept = np.take_along_axis(on[group], order, axis=1)
            c_kept = np.take_along_axis(c[group], order, axis=1)
            ys = self._gather(np.take_along_axis(rows[group], order, axis=1), kept)
            b = np.einsum("nld,nl->nd", ys, c_kept + 1.0)  # padding's factors are zero
            if group is low:
                out[group] = self._low_rank(ys, b, c_kept, kept)
            else:
                out[group] = self._full(ys, b, c_kept)
        return out

    def _gather(
        self, rows: npt.NDArray[np.intp], on: npt.NDArray[np.bool_]
    ) -> npt.NDArray[np.float64]:
        """(n, L, d) float64 factors of `rows`, zero where not `on` (padding)."""
        ys = np.asarray(self._y[np.where(on, rows, 0)], dtype=np.float64)
        ys[~on] = 0.0
        return ys

    def _low_rank(
        self,
        ys: npt.NDArray[np.float64],
        b: npt.NDArray[np.float64],
        c: npt.NDArray[np.float64],
        on: npt.NDArray[np.bool_],
    ) -> npt.NDArray[np.float64]:
        """`batch` by the Woodbury identity (see the class doc), L x L per shopper: `ys`
        (n, L, d) the gathered factors, `b` (n, d) the right-hand sides, `c` (n, L) each
        c_i - 1, `on` where an entry is not padding."""
        n, width, d = ys.shape
        z = (ys.reshape(n * width, d) @ self._inverse).reshape(n, width, d)  # Y S⁻¹
        v = b @ self._inverse  # S⁻¹ b (S⁻¹ symmetric)
        m = z @ ys.transpose(0, 2, 1)
        diagonal = np.arange(width)
        m[:, diagonal, diagonal] += np.where(on, 1.0 / np.where(on, c, 1.0), 1.0)  # padding: 1
        x = np.linalg.solve(m, np.einsum("nld,nd->nl", ys, v)[:, :, None])[:, :, 0]
        out: npt.NDArray[np.float64] = v - np.einsum("nld,nl->nd", z, x)
        return out

    def _full(
        self, ys: npt.NDArray[np.float64], b: npt.NDArray[np.float64], c: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        """`batch` by solving each shopper's d x d system (arguments as `_low_rank`'s)."""
        a = self._system[None] + np.einsum("nld,nl,nle->nde", ys, c, ys, optimize=True)
        out: npt.NDArray[np.float64] = np.linalg.solve(a, b[:, :, None])[:, :, 0]
        return out
