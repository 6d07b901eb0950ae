"""A shopper's state as one JSON-able document (`pushrec user show`)."""

from __future__ import annotations

from typing import Any

from indexing.history import decay_term
from push import fingerprint
from worker.delivery.outbox import Outbox
from worker.shoppers.audit import Audit, Decision
from worker.shoppers.snapshot import ShopperReads
from worker.shoppers.state import decayed_weight
from worker.store.client import StateRedis
from worker.store.keys import Keys


def _num(value: str | None) -> float | None:
    return float(value) if value is not None else None


def decisions_view(audit: Audit, outbox: Outbox, user_id: str) -> list[Decision]:
    """The shopper's last decisions, newest first, each with its message's delivery
    state and attempts when one was queued."""
    out = []
    for decision in audit.decisions(user_id):
        mid = decision.get("message_id")
        if decision.get("action") == "queued" and mid:
            decision["delivery"] = {
                "state": outbox.state(mid),
                "attempts": outbox.attempts(mid),
                "outcome": audit.outcomes(mid),
            }
        out.append(decision)
    return out


_READS = ShopperReads.of(
    "profile", "recent", "history", "cart", "cart_quantities", "purchases",
    "purchase_history", "affinity", "devices", "preferences",
)  # fmt: skip


def user_view(client: StateRedis, keys: Keys, user_id: str, now: float) -> dict[str, Any]:
    """Everything pushrec holds about `user_id`; device tokens shown only as fingerprints."""
    s = _READS.read(client, keys, user_id)
    profile = s.profile
    last_purchase = _num(profile.get("last_purchase"))
    scale = decayed_weight(1.0, now)
    history_scale = 1.0 / decay_term(now)
    purchases = sorted(s.purchases.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:50]
    return {
        "user_id": user_id,
        "exists": bool(profile),
        "profile": {
            "first_seen": _num(profile.get("first_seen")),
            "last_seen": _num(profile.get("last_seen")),
            "last_event": profile.get("last_event"),
            "events": int(profile.get("events", 0)),
        },
        "rfm": {
            "recency_days": None if last_purchase is None else (now - last_purchase) / 86_400,
            "frequency": int(profile.get("orders", 0)),
            "monetary": round(float(profile.get("monetary", 0.0)), 2),
        },
        "recent": s.recent,
        # the model's view: per item and event type, the count and the sum decayed to now
        # at the state's half-life (indexing.history); the index's type weights apply
        "item_history": [
            {
                "item_id": entry.item_id,
                "last_at": entry.last_ts,
                "events": {t: int(count) for t, (count, _) in entry.sums.items()},
                "decayed": {t: round(d * history_scale, 6) for t, (_, d) in entry.sums.items()},
            }
            for entry in s.history
        ],
        "cart": [
            {"item_id": item, "quantity": qty, "added_at": s.cart_added.get(item)}
            for item, qty in sorted(s.cart.items())
        ],
        "purchases": [
            {"item_id": item, "last_at": ts, "count": s.purchase_counts.get(item, 1)}
            for item, ts in purchases
        ],
        "category_affinity": {cat: round(score / scale, 4) for cat, score in s.affinity[:20]},
        "devices": [
            {
                "device_id": did,
                "channel": record["channel"],
                "active": record.get("active", True),
                "registered_at": record.get("registered_at"),
                "address": fingerprint(
                    record.get("token") or record.get("subscription", {}).get("endpoint", "")
                ),
            }
            for did, record in s.devices.items()
        ],
        "preferences": s.preferences,
    }
