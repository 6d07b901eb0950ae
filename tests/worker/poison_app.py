"""A worker app for the poison-message test: pushrec's app with pushrec's task wrapper,
plus one task whose body kills its own worker process, as a segfaulting native library
or the kernel's OOM killer would. Run as `celery -A tests.worker.poison_app worker`."""

from __future__ import annotations

import os
import signal
from typing import Any

from tests.worker.test_dead_letters import KILLER
from worker.service.app import create_app
from worker.service.runtime import Runtime
from worker.service.tasks import PushrecTask, TaskSpec, register_task
from worker.settings import Settings


def _kill_own_worker(task: PushrecTask, rt: Runtime, kwargs: dict[str, Any]) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


app = create_app(Settings.load())
register_task(app, TaskSpec(KILLER, _kill_own_worker, optional=frozenset({"n"})))
