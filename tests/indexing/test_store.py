"""Artifacts: written whole, verified on load, refused when corrupt, gated on publish."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexing import (
    ArtifactNotFoundError,
    ChecksumError,
    ManifestError,
    ModelParams,
    QualityGateError,
    current_version,
    list_versions,
    load_index,
    publish,
    read_events,
    save_model,
    train_model,
)
from indexing.factors import AlsParams
from indexing.model import TrainedModel
from tests.indexing.conftest import planted_rows

PARAMS = ModelParams(als=AlsParams(factors=8, iterations=5))


@pytest.fixture(scope="module")
def model() -> TrainedModel:
    log, _ = read_events(planted_rows())
    return train_model(log, PARAMS)


def _save(store: Path, model: TrainedModel, recall: float, se: float | None = None) -> str:
    served = {"recall@10": recall} if se is None else {"recall@10": recall, "recall@10_se": se}
    version, _ = save_model(store, model, evaluation={"served": served})
    return version


def test_round_trip_and_current_pointer(tmp_path: Path, model: TrainedModel) -> None:
    version = _save(tmp_path, model, 0.3)
    with pytest.raises(ArtifactNotFoundError):
        current_version(tmp_path)
    decision = publish(tmp_path, version)
    assert decision["version"] == version and decision["previous"] is None
    assert current_version(tmp_path) == version
    index = load_index(tmp_path)
    assert index.version == version and len(index) == len(model.item_ids)
    manifest = index.manifest
    assert manifest["format_version"] == 1 and manifest["dim"] == 8
    assert manifest["metric"] == "inner_product" and manifest["index"]["kind"] == "flat"
    assert manifest["counts"]["items"] == len(model.item_ids)
    assert set(manifest["files"]) >= {"index.faiss", "item_ids.npy", "factors.npy"}
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    assert not list(tmp_path.glob(".tmp-*"))
    assert np.allclose(index.factors, model.factors)


def test_corrupt_file_is_refused_and_old_version_stays_current(
    tmp_path: Path, model: TrainedModel
) -> None:
    good = _save(tmp_path, model, 0.3)
    publish(tmp_path, good)
    bad = _save(tmp_path, model, 0.3)
    path = tmp_path / bad / "factors.npy"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="sha256"):
        load_index(tmp_path, bad)
    with pytest.raises(ChecksumError):
        publish(tmp_path, bad)
    assert current_version(tmp_path) == good
    assert load_index(tmp_path).version == good


def test_truncated_index_is_refused(tmp_path: Path, model: TrainedModel) -> None:
    version = _save(tmp_path, model, 0.3)
    path = tmp_path / version / "index.faiss"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ChecksumError, match="truncated"):
        load_index(tmp_path, version)


def test_manifest_mismatch_is_refused(tmp_path: Path, model: TrainedModel) -> None:
    version = _save(tmp_path, model, 0.3)
    manifest_path = tmp_path / version / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["dim"] = 16
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="disagree"):
        load_index(tmp_path, version)
    manifest["format_version"] = 99
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="format_version"):
        load_index(tmp_path, version)
    manifest_path.write_text("{not json")
    with pytest.raises(ManifestError):
        load_index(tmp_path, version)


def test_unlisted_file_is_refused(tmp_path: Path, model: TrainedModel) -> None:
    version = _save(tmp_path, model, 0.3)
    (tmp_path / version / "extra.npy").write_bytes(b"x")
    with pytest.raises(ManifestError, match="not in the manifest"):
        load_index(tmp_path, version)


def test_quality_gate_refuses_a_worse_build_unless_forced(
    tmp_path: Path, model: TrainedModel
) -> None:
    first = _save(tmp_path, model, 0.30)
    publish(tmp_path, first)
    slightly_worse = _save(tmp_path, model, 0.29)  # within 5%
    publish(tmp_path, slightly_worse)
    assert current_version(tmp_path) == slightly_worse
    much_worse = _save(tmp_path, model, 0.20)
    with pytest.raises(QualityGateError):
        publish(tmp_path, much_worse)
    assert current_version(tmp_path) == slightly_worse
    decision = publish(tmp_path, much_worse, force=True)
    assert decision["forced"] and current_version(tmp_path) == much_worse
    assert list_versions(tmp_path) == sorted([first, slightly_worse, much_worse])


def test_quality_gate_passes_a_drop_within_chance_and_refuses_one_beyond(
    tmp_path: Path, model: TrainedModel
) -> None:
    first = _save(tmp_path, model, 0.120, se=0.005)
    publish(tmp_path, first)
    # 8% lower, but 1.4 standard errors of the difference: two test periods differ so
    noisy = _save(tmp_path, model, 0.110, se=0.005)
    assert publish(tmp_path, noisy)["previous"] == first
    # 27% lower, 4.2 standard errors: a regression
    worse = _save(tmp_path, model, 0.080, se=0.005)
    with pytest.raises(QualityGateError, match="standard errors below"):
        publish(tmp_path, worse)
    assert current_version(tmp_path) == noisy


def test_quality_gate_without_standard_errors_keeps_the_plain_rule(
    tmp_path: Path, model: TrainedModel
) -> None:
    publish(tmp_path, _save(tmp_path, model, 0.120))  # an older manifest: no recall@10_se
    with pytest.raises(QualityGateError):
        publish(tmp_path, _save(tmp_path, model, 0.110, se=0.005))


def test_quality_gate_with_zero_standard_errors_keeps_the_plain_rule(
    tmp_path: Path, model: TrainedModel
) -> None:
    publish(tmp_path, _save(tmp_path, model, 0.120, se=0.0))
    with pytest.raises(QualityGateError, match="more than 5% below"):
        publish(tmp_path, _save(tmp_path, model, 0.110, se=0.0))


def test_missing_store_or_version_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFoundError):
        load_index(tmp_path / "nowhere")
    with pytest.raises(ArtifactNotFoundError):
        load_index(tmp_path, "20990101T000000Z")


def test_manifest_with_malformed_params_is_refused(tmp_path: Path, model: TrainedModel) -> None:
    version = _save(tmp_path, model, 0.3)
    manifest_path = tmp_path / version / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["params"]["als"] = "fast"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="malformed"):
        load_index(tmp_path, version)


def test_prune_keeps_newest_and_current(tmp_path: Path, model: TrainedModel) -> None:
    from indexing import prune_versions

    versions = [_save(tmp_path, model, 0.3) for _ in range(4)]
    publish(tmp_path, versions[0])
    deleted = prune_versions(tmp_path, keep=2)
    assert deleted == [versions[1]]
    assert list_versions(tmp_path) == [versions[0], *versions[2:]]


def test_prune_spares_the_versions_named(tmp_path: Path, model: TrainedModel) -> None:
    from indexing import prune_versions

    versions = [_save(tmp_path, model, 0.3) for _ in range(5)]
    publish(tmp_path, versions[4])
    assert prune_versions(tmp_path, keep=1, spare={versions[1], "gone"}) == [
        versions[0], versions[2], versions[3],
    ]  # fmt: skip
    assert list_versions(tmp_path) == [versions[1], versions[4]]
    with pytest.raises(ValueError, match="keep"):
        prune_versions(tmp_path, keep=-1)
