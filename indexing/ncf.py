"""NeuMF (He et al. 2017, "Neural Collaborative Filtering"), an optional extra model.

Two towers with their own embeddings: GMF (the element-wise product of a user and an item
vector) and an MLP over their concatenated MLP embeddings; the GMF vector and the MLP's last
layer are concatenated into one linear output (a logit). Trained with binary cross-entropy
on the observed (user, item) cells of a train matrix plus `negatives` uniformly sampled
unobserved items per positive, re-sampled every epoch, by Adam on shuffled mini-batches.
Unlike the paper, the towers are not pre-trained separately (one joint fit from a seeded
random start): the tuning budget goes to the settings instead.

PyTorch is optional (`pip install 'pushrec[ncf]'`): this module imports it only inside the
functions that train or score, so importing `indexing` never needs it; `require_torch`
raises `MissingDependencyError` with the install command. Runs on the CPU with one torch
thread (restored afterwards); seeded (`torch.manual_seed` and a numpy generator), so a fit
is deterministic.

A trained `NcfRanker` is a `indexing.baselines.Ranker`; it scores the users it was trained
on only: NeuMF has no closed-form fold-in (see docs/indexing.md, "Neural collaborative
filtering").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from indexing.errors import MissingDependencyError
from indexing.evaluate import DiscoveryTask, Metrics, discovery_task, evaluate_rankings
from indexing.events import EventLog
from indexing.experiment import rank_all
from indexing.matrix import Weighting, interaction_matrix
from indexing.tuning import TuneGrid

__all__ = [
    "INSTALL_HINT",
    "NcfGrid",
    "NcfParams",
    "NcfRanker",
    "evaluate_ncf",
    "require_torch",
    "train_ncf",
    "tune_ncf",
]

INSTALL_HINT = "pip install 'pushrec[ncf]'"
#: Upper bound on the (users x items x first MLP width) floats of one scoring block.
_BLOCK_FLOATS = 1 << 22


@dataclass(frozen=True)
class NcfParams:
    """NeuMF hyperparameters.

    factors: GMF embedding size. layers: MLP widths, `layers[0]` the concatenated input
    (user and item MLP embeddings of `layers[0] // 2` each), the last the MLP's predictive
    factors. negatives: sampled negatives per observed cell and epoch. l2: weight of the
    squared norm of the batch's embeddings, per example. Defaults: what `tune_ncf` chose on
    Online Retail (docs/indexing.md); a 3-layer tower and 4 negatives as in He et al.
    """

    factors: int = 64
    layers: tuple[int, ...] = (128, 64, 32)
    negatives: int = 4
    epochs: int = 7
    lr: float = 0.001
    l2: float = 1e-4
    batch_size: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.layers) < 2 or self.layers[0] % 2:
            raise ValueError(f"layers: need >= 2 widths, the first even: {self.layers}")

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["layers"] = list(self.layers)
        return out


def require_torch() -> Any:
    """The `torch` module, or `MissingDependencyError` naming the install command."""
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError(
            f"NCF needs PyTorch, which is not installed: {INSTALL_HINT}"
        ) from exc
    return torch


@contextmanager
def _one_thread(torch: Any) -> Iterator[None]:
    # the cores are shared with the workers; one thread also fixes the order of reductions
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class NcfRanker:
    """A trained NeuMF network: `scores(users)` -> float32 (len(users), n_items) logits.

    Scoring every item per user splits the MLP's first layer into a user part and an item
    part; the item parts (and the GMF item vectors times their output weights) are computed
    at the first call and kept, as a server would keep them, so one user costs n_items x
    (the MLP after its first layer) multiply-adds plus one GMF dot product per item. The
    network must therefore not change once scored (`train_ncf` hands each epoch's callback
    a fresh ranker).
    """

    def __init__(self, net: Any, params: NcfParams):
        """net: the `torch.nn.ModuleDict` `train_ncf` builds (torch is typed `Any` here: the
        module must type-check where it is not installed)."""
        self.net = net
        self.params = params
        self._item_side: tuple[Any, Any] | None = None

    @property
    def n_items(self) -> int:
        return int(self.net["item_gmf"].num_embeddings)

    def scores(self, users: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        torch = require_torch()
        net = self.net
        half = self.params.layers[0] // 2
        first = net["mlp"][0]
        with _one_thread(torch), torch.no_grad():
            h_mlp = net["out"].weight[0, self.params.factors :]
            if self._item_side is None:
                h_gmf = net["out"].weight[0, : self.params.factors]
                self._item_side = (
                    net["item_gmf"].weight * h_gmf,  # (n_items, factors)
                    net["item_mlp"].weight @ first.weight[:, half:].T + first.bias,
                )
            item_gmf, item_first = self._item_side
            u = torch.from_numpy(np.ascontiguousarray(users, dtype=np.int64))
            rows = max(1, _BLOCK_FLOATS // max(1, self.n_items * first.out_features))
            out = np.empty((users.shape[0], self.n_items), dtype=np.float32)
            for start in range(0, users.shape[0], rows):
                b = u[start : start + rows]
                gmf = net["user_gmf"](b) @ item_gmf.T
                user_first = net["user_mlp"](b) @ first.weight[:, :half].T
                h = torch.relu(user_first[:, None, :] + item_first[None, :, :])
                for layer in list(net["mlp"])[1:]:
                    h = layer(h)
                logits = gmf + h @ h_mlp + net["out"].bias
                out[start : start + b.shape[0]] = logits.numpy()
        return out

    def logits(
        self, users: npt.NDArray[np.int64], items: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        """Float32 (n,): the network's output for the pairs (users[j], items[j])."""
        torch = require_torch()
        with _one_thread(torch), torch.no_grad():
            out = _forward(
                torch,
                self.net,
                torch.from_numpy(np.ascontiguousarray(users, dtype=np.int64)),
                torch.from_numpy(np.ascontiguousarray(items, dtype=np.int64)),
            )
            return np.asarray(out.numpy(), dtype=np.float32)


def _network(torch: Any, n_users: int, n_items: int, p: NcfParams) -> Any:
    nn = torch.nn
    mlp: list[Any] = []
    for width_in, width_out in zip(p.layers[:-1], p.layers[1:], strict=True):
        mlp += [nn.Linear(width_in, width_out), nn.ReLU()]
    net = nn.ModuleDict(
        {
            "user_gmf": nn.Embedding(n_users, p.factors),
            "item_gmf": nn.Embedding(n_items, p.factors),
            "user_mlp": nn.Embedding(n_users, p.layers[0] // 2),
            "item_mlp": nn.Embedding(n_items, p.layers[0] // 2),
            "mlp": nn.Sequential(*mlp),
            "out": nn.Linear(p.factors + p.layers[-1], 1),
        }
    )
    for name in ("user_gmf", "item_gmf", "user_mlp", "item_mlp"):
        nn.init.normal_(net[name].weight, std=0.01)
    return net


def _forward(torch: Any, net: Any, u: Any, i: Any) -> Any:
    gmf = net["user_gmf"](u) * net["item_gmf"](i)
    mlp = net["mlp"](torch.cat([net["user_mlp"](u), net["item_mlp"](i)], dim=1))
    return net["out"](torch.cat([gmf, mlp], dim=1)).squeeze(1)


def _negatives(
    rng: np.random.Generator,
    users: npt.NDArray[np.int64],
    candidates: npt.NDArray[np.int64],
    positive_keys: npt.NDArray[np.int64],
    n_items: int,
) -> npt.NDArray[np.int64]:
    """One uniformly drawn candidate item per entry of `users`, not a positive of that user
    (`positive_keys`: sorted user * n_items + item); clashes are redrawn up to 100 times,
    so only a user holding nearly every candidate can keep one."""
    items: npt.NDArray[np.int64] = candidates[
        rng.integers(0, candidates.shape[0], size=users.shape[0])
    ]
    for _ in range(100):
        keys = users * n_items + items
        at = np.minimum(np.searchsorted(positive_keys, keys), positive_keys.shape[0] - 1)
        clash = positive_keys[at] == keys
        if not clash.any():
            break
        items[clash] = candidates[rng.integers(0, candidates.shape[0], size=int(clash.sum()))]
    return items


def train_ncf(
    matrix: sp.csr_matrix,
    params: NcfParams = NcfParams(),
    *,
    after_epoch: Callable[[int, NcfRanker], None] | None = None,
) -> NcfRanker:
    """Fit NeuMF on the stored cells of a users x items matrix (CSR; any positive weight is
    one observed pair, weights are not used).

    Negatives are drawn from the items with at least one cell. `after_epoch(epoch, ranker)`
    (epochs from 1) lets a caller evaluate the network as it trains; it must not train it.
    Raises `MissingDependencyError` without PyTorch.
    """
    torch = require_torch()
    coo = sp.coo_matrix(matrix)
    keep = coo.data > 0
    pos_u = coo.row[keep].astype(np.int64)
    pos_i = coo.col[keep].astype(np.int64)
    n_users, n_items = matrix.shape
    keys = np.sort(pos_u * n_items + pos_i)
    candidates = np.unique(pos_i)
    rng = np.random.default_rng(params.seed)
    labels = np.concatenate(
        [
            np.ones(pos_u.shape[0], np.float32),
            np.zeros(pos_u.shape[0] * params.negatives, np.float32),
        ]
    )
    with _one_thread(torch):
        torch.manual_seed(params.seed)
        net = _network(torch, n_users, n_items, params)
        optimiser = torch.optim.Adam(net.parameters(), lr=params.lr)
        embeddings = [net[n] for n in ("user_gmf", "item_gmf", "user_mlp", "item_mlp")]
        for epoch in range(1, params.epochs + 1):
            neg_u = np.repeat(pos_u, params.negatives)
            neg_i = _negatives(rng, neg_u, candidates, keys, n_items)
            order = rng.permutation(labels.shape[0])
            u_all = torch.from_numpy(np.concatenate([pos_u, neg_u])[order])
            i_all = torch.from_numpy(np.concatenate([pos_i, neg_i])[order])
            y_all = torch.from_numpy(labels[order])
            for start in range(0, labels.shape[0], params.batch_size):
                u = u_all[start : start + params.batch_size]
                i = i_all[start : start + params.batch_size]
                y = y_all[start : start + params.batch_size]
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    _forward(torch, net, u, i), y
                )
                if params.l2:
                    rows = [e(u) for e in embeddings[::2]] + [e(i) for e in embeddings[1::2]]
                    loss = loss + params.l2 * sum((r * r).sum() for r in rows) / u.shape[0]
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            if after_epoch is not None:
                after_epoch(epoch, NcfRanker(net, params))
    return NcfRanker(net, params)


def _default_settings() -> tuple[NcfParams, ...]:
    # On Online Retail 16 factors lost to 32 and 32 to 64 at every epoch; 128 was no better
    # than 64 at twice the cost (docs/indexing.md, "Neural collaborative filtering").
    return tuple(
        NcfParams(factors=f, layers=(2 * f, f, f // 2), lr=lr, l2=1e-4)
        for f, lr in ((32, 0.001), (64, 0.001), (64, 0.002))
    )


@dataclass(frozen=True)
class NcfGrid:
    """The NCF search: every setting trained `max_epochs` on the first validation split and
    scored after each epoch (the epoch count is a tuned knob at no extra training), the best
    `second_round` settings on the other splits; chosen by mean recall@10 over the splits,
    the same splits as `indexing.tuning.tune` (`TuneGrid.validation_fractions`)."""

    settings: tuple[NcfParams, ...] = field(default_factory=_default_settings)
    max_epochs: int = 10
    second_round: int = 2
    validation_fractions: tuple[float, ...] = tuple(TuneGrid().validation_fractions)


def _train_matrix(task: DiscoveryTask) -> sp.csr_matrix:
    return interaction_matrix(task.train, Weighting(), as_of=task.split_ts)


def _recall_curve(task: DiscoveryTask, raw: sp.csr_matrix, params: NcfParams) -> list[float]:
    """Validation recall@10 of `params` after each epoch."""
    n_warm = int(task.warm.sum())
    curve: list[float] = []

    def score(epoch: int, ranker: NcfRanker) -> None:
        ranked = rank_all(ranker, task, 10)
        curve.append(evaluate_rankings(ranked, task.truth, n_warm, (10,))["recall@10"])

    train_ncf(raw, params, after_epoch=score)
    return curve


def tune_ncf(log: EventLog, grid: NcfGrid = NcfGrid()) -> tuple[NcfParams, dict[str, object]]:
    """Choose NcfParams on validation splits of `log` (pass the train period).

    Returns the chosen parameters (with their epoch count) and a report: every setting's
    recall@10 per epoch on each split it ran on, the mean, the timings.
    Raises `MissingDependencyError` without PyTorch.
    """
    require_torch()
    started = time.perf_counter()
    tasks = [discovery_task(log, fraction) for fraction in grid.validation_fractions]
    raws = [_train_matrix(t) for t in tasks]
    settings = [replace(s, epochs=grid.max_epochs) for s in grid.settings]
    first = {s: _recall_curve(tasks[0], raws[0], s) for s in settings}
    kept = sorted(settings, key=lambda s: -max(first[s]))[: grid.second_round]
    curves = {
        s: [first[s]] + [_recall_curve(t, r, s) for t, r in zip(tasks[1:], raws[1:], strict=True)]
        for s in kept
    }
    means = {s: np.mean(np.array(c), axis=0).tolist() for s, c in curves.items()}
    best, epochs = max(
        ((s, e) for s in kept for e in range(1, grid.max_epochs + 1)),
        key=lambda se: means[se[0]][se[1] - 1],
    )
    chosen = replace(best, epochs=epochs)
    value = means[best][epochs - 1]
    return chosen, {
        "validation": [
            {"fraction": f, "split_ts": t.split_ts, "users": len(t.truth)}
            for f, t in zip(grid.validation_fractions, tasks, strict=True)
        ],
        "first_split": [{**s.as_dict(), "recall@10_by_epoch": c} for s, c in first.items()],
        "all_splits": [
            {**s.as_dict(), "recall@10_by_epoch_per_split": curves[s], "mean_by_epoch": means[s]}
            for s in kept
        ],
        "chosen": chosen.as_dict(),
        "validation_recall@10": value,
        "seconds": time.perf_counter() - started,
    }


def evaluate_ncf(
    task: DiscoveryTask, params: NcfParams, ks: tuple[int, ...] = (10, 20)
) -> tuple[Metrics, float]:
    """Train on `task`'s train period, rank as every baseline is ranked (`rank_all`), and
    return its metrics on `task` and the training wall time in seconds."""
    started = time.perf_counter()
    ranker = train_ncf(_train_matrix(task), params)
    train_s = time.perf_counter() - started
    ranked = rank_all(ranker, task)
    return evaluate_rankings(ranked, task.truth, int(task.warm.sum()), ks), train_s
