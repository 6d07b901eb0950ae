"""Send pushrec's contract tasks from a Python web app.

    from worker.client import PushrecClient
    client = PushrecClient("redis://localhost:6379/0")
    client.track({"event_id": "e1", "user_id": "u1", "type": "view",
                  "item_id": "sku-1", "ts": "2026-11-28T10:00:00Z"})

Only the task names and queues of the public contract are used (`worker.contract`);
nothing of the worker's internals is imported, so this works in any app process.
Apps in other languages send the same names and JSON kwargs with any Celery
protocol-2 client (README, "Task contract").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from celery import Celery

from worker import contract

DEFAULT_QUEUES: Mapping[str, str] = {
    contract.ACTIVITY: "activity",
    contract.PUSH: "push",
    contract.MAINTENANCE: "maintenance",
}


class PushrecClient:
    """A producer. Thread-safe as Celery's producer pool is; `close()` when done."""

    def __init__(
        self,
        broker_url: str,
        *,
        result_backend: str | None = None,
        queues: Mapping[str, str] | None = None,
        broker_key_prefix: str = "",
    ) -> None:
        self._queues = {**DEFAULT_QUEUES, **(queues or {})}
        self._app = Celery("pushrec-client", set_as_current=False)
        options = {"global_keyprefix": broker_key_prefix} if broker_key_prefix else {}
        self._app.conf.update(
            broker_url=contract.celery_url(broker_url),
            result_backend=contract.celery_url(result_backend) if result_backend else None,
            task_serializer="json",
            accept_content=["json"],
            result_accept_content=["json"],
            broker_transport_options=options,
            result_backend_transport_options=options,
            broker_connection_retry_on_startup=True,
        )

    def send(self, task_name: str, **kwargs: Any) -> str:
        """Enqueue `task_name` with JSON `kwargs` on its contract queue; returns the task id."""
        queue = self._queues[contract.TASK_QUEUES[task_name]]
        result = self._app.send_task(task_name, kwargs=kwargs, queue=queue)
        return str(result.id)

    def track(self, event: Mapping[str, Any]) -> str:
        return self.send(contract.TRACK, event=dict(event))

    def track_batch(self, events: Sequence[Mapping[str, Any]]) -> str:
        return self.send(contract.TRACK_BATCH, events=[dict(e) for e in events])

    def upsert_items(self, items: Sequence[Mapping[str, Any]]) -> str:
        return self.send(contract.UPSERT_ITEMS, items=[dict(i) for i in items])

    def register_device(
        self,
        user_id: str,
        channel: str,
        *,
        token: str | None = None,
        subscription: Mapping[str, Any] | None = None,
    ) -> str:
        kwargs: dict[str, Any] = {"user_id": user_id, "channel": channel}
        if token is not None:
            kwargs["token"] = token
        if subscription is not None:
            kwargs["subscription"] = dict(subscription)
        return self.send(contract.REGISTER_DEVICE, **kwargs)

    def unregister_device(
        self, user_id: str, channel: str, *, token: str | None = None, endpoint: str | None = None
    ) -> str:
        kwargs: dict[str, Any] = {"user_id": user_id, "channel": channel}
        if token is not None:
            kwargs["token"] = token
        if endpoint is not None:
            kwargs["endpoint"] = endpoint
        return self.send(contract.UNREGISTER_DEVICE, **kwargs)

    def set_preferences(self, user_id: str, **preferences: Any) -> str:
        return self.send(contract.SET_PREFERENCES, user_id=user_id, **preferences)

    def forget_user(self, user_id: str, *, wait_s: float | None = None) -> str | dict[str, Any]:
        """Erase a shopper. With `wait_s` (needs `result_backend`), return the report."""
        task_id = self.send(contract.FORGET_USER, user_id=user_id)
        if wait_s is None:
            return task_id
        report: dict[str, Any] = self._app.AsyncResult(task_id).get(timeout=wait_s)
        return report

    def check_coupon(
        self,
        code: str,
        *,
        user_id: str | None = None,
        basket: float | None = None,
        wait_s: float = 5.0,
    ) -> dict[str, Any]:
        """At checkout: whether `code` is valid now (for `user_id`, for a basket of
        `basket`, when given), whose it is, its offer, expired, used (README, "Coupons at
        checkout"). Needs `result_backend`."""
        kwargs = _given(code=code, user_id=user_id, basket=basket)
        return self._answer(contract.CHECK_COUPON, kwargs, wait_s)

    def redeem_coupon(
        self,
        code: str,
        *,
        user_id: str | None = None,
        order_id: str | None = None,
        basket: float | None = None,
        wait_s: float = 5.0,
    ) -> dict[str, Any]:
        """Redeem `code` once: `redeemed` true, or false with the `reason` (unknown,
        not_issued, expired, foreign, used, below_minimum). The same `order_id` again
        answers as the first call did. Needs `result_backend`."""
        kwargs = _given(code=code, user_id=user_id, order_id=order_id, basket=basket)
        return self._answer(contract.REDEEM_COUPON, kwargs, wait_s)

    def _answer(self, task: str, kwargs: dict[str, Any], wait_s: float) -> dict[str, Any]:
        task_id = self.send(task, **kwargs)
        answer: dict[str, Any] = self._app.AsyncResult(task_id).get(timeout=wait_s)
        return answer

    def close(self) -> None:
        self._app.close()

    def __enter__(self) -> PushrecClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _given(**kwargs: Any) -> dict[str, Any]:
    return {name: value for name, value in kwargs.items() if value is not None}
