"""The package map of the README, checked mechanically: `indexing` and `push` are
libraries that import neither `worker` nor each other, and `worker`'s sub-packages import
only down their layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "indexing": {"worker", "push"},
    "push": {"worker", "indexing"},
}


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_library_does_not_import_forbidden_packages(package: str) -> None:
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = _imported_top_levels(path) & FORBIDDEN[package]
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "\n".join(offenders)


def test_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import worker.service.tasks\nfrom push.gateway import x\nfrom . import y\n")
    assert _imported_top_levels(module) == {"worker", "push"}


def test_the_worker_contract_and_indexing_agree_on_event_types() -> None:
    # `worker.contract` stays free of numpy/faiss for producers, so it cannot import them.
    from indexing import EVENT_TYPES
    from worker.contract import EVENT_TYPES as CONTRACT_TYPES

    assert tuple(CONTRACT_TYPES) == tuple(EVENT_TYPES)


# worker's sub-packages, lowest first: a module imports from its own layer and those below.
# The kernel (settings, contract, rules, client) is `worker.<module>`; `worker.__main__`
# (the entry point) stands above them all.
WORKER_LAYERS = (
    "kernel", "store", "shoppers", "segmenting", "policy", "coupons", "delivery", "firing",
    "campaigning", "service", "replay", "cli",
)  # fmt: skip


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in WORKER_LAYERS:
        return WORKER_LAYERS.index(parts[1])
    if len(parts) > 1 and parts[1] == "__main__":
        return len(WORKER_LAYERS)
    return 0


def _worker_imports(path: Path) -> set[str]:
    """Dotted names of the worker modules (or packages) that `path` imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "worker")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "worker":
                found.update(f"worker.{a.name}" for a in node.names)
            elif node.module.startswith("worker."):
                found.add(node.module)
    return found


def _layer_offences(root: Path) -> list[str]:
    offences = []
    for path in sorted((root / "worker").rglob("*.py")):
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        for imported in sorted(_worker_imports(path)):
            if _layer(imported) > _layer(module):
                offences.append(f"{module} imports {imported}, a layer above it")
    return offences


def test_worker_imports_run_down_its_layers() -> None:
    offences = _layer_offences(ROOT)
    assert not offences, "\n".join(offences)


def test_layer_checker_sees_an_import_up_the_layers(tmp_path: Path) -> None:
    store = tmp_path / "worker" / "store"
    store.mkdir(parents=True)
    (store / "keys.py").write_text("from worker.service.app import create_app\n")
    (store / "ok.py").write_text("from worker import contract\nfrom worker.store import keys\n")
    delivery = tmp_path / "worker" / "delivery"
    delivery.mkdir()
    (delivery / "sender.py").write_text("import worker.firing.firer\n")
    assert _layer_offences(tmp_path) == [
        "worker.delivery.sender imports worker.firing.firer, a layer above it",
        "worker.store.keys imports worker.service.app, a layer above it",
    ]
