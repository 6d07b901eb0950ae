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
