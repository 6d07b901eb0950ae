"""`pushrec index rebuild` and the CLI publishes move the Redis pointer workers follow
(real `pushrec` processes, the test Redis, the settings' index store)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from indexing import current_version, list_versions
from tests.indexing.conftest import planted_rows
from tests.worker.conftest import worker_env
from tests.worker.test_cli import pushrec
from tests.worker.test_rebuild import feed
from worker.service.runtime import Runtime
from worker.settings import Settings


def events_csv(path: Path, seed: int) -> Path:
    rows = planted_rows(seed)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_index_rebuild_shows_its_stages_and_moves_the_pointer(
    settings: Settings, runtime: Runtime
) -> None:
    events = feed(runtime)

    done = pushrec("index", "rebuild", "--force", env=worker_env(settings))

    assert done.returncode == 0, done.stderr
    version = json.loads(done.stdout)["version"]
    assert runtime.redis.get(runtime.keys.index_version) == version
    stages = [line.split(" (")[0] for line in done.stderr.splitlines() if line.startswith("[")]
    assert stages == [
        f"[1/6] reading the log: {events:,} rows",
        "[2/6] evaluating",
        "[3/6] training",
        "[4/6] building the index",
        "[5/6] uploading",
        "[6/6] publishing",
    ]


def test_cli_publishes_move_the_pointer_and_publish_rolls_back(
    settings: Settings, runtime: Runtime, tmp_path: Path
) -> None:
    env = worker_env(settings)
    store = settings.state_dir / "index"
    first = pushrec("index", "build", "--events", str(events_csv(tmp_path / "a.csv", 0)),
                    "--publish", env=env)  # fmt: skip
    assert first.returncode == 0, first.stderr
    old = json.loads(first.stdout)["version"]
    runtime.redis.set(runtime.keys.index_version, old)  # as a rebuild job would have
    second = pushrec("index", "build", "--events", str(events_csv(tmp_path / "b.csv", 1)),
                     "--publish", "--force", env=env)  # fmt: skip
    assert second.returncode == 0, second.stderr
    new = json.loads(second.stdout)["version"]
    assert (current_version(store), runtime.redis.get(runtime.keys.index_version)) == (new, new)

    back = pushrec("index", "publish", old, "--force", env=env)

    assert back.returncode == 0, back.stderr
    assert (current_version(store), runtime.redis.get(runtime.keys.index_version)) == (old, old)
    missing = pushrec("index", "publish", "20000101T000000000000Z", env=env)
    assert missing.returncode == 2 and runtime.redis.get(runtime.keys.index_version) == old


def test_a_publish_without_redis_stops_before_building(settings: Settings, tmp_path: Path) -> None:
    env = {**worker_env(settings), "PUSHREC_REDIS_URL": "redis://127.0.0.1:1/0"}

    done = pushrec("index", "build", "--events", str(events_csv(tmp_path / "a.csv", 0)),
                   "--publish", env=env)  # fmt: skip

    assert done.returncode == 2
    assert "does not answer" in done.stderr and "nothing was published" in done.stderr
    assert list_versions(settings.state_dir / "index") == []
