"""Right to erasure: remove every trace of one shopper that pushrec keeps.

What names a shopper, and how erasure finds it:

- the shopper's own keys (`UserKeys.all()`), deleted;
- their messages (`{m:<id>}:*`, the record holds the user id), found through
  `UserKeys.messages` and the decisions, deleted and taken off `outbox:queued`;
- item interest sets (`{i:<item>}:interested`), found through `UserKeys.interests`;
- the segment indexes of the shopper's shard (`segment_index.SegmentIndex.forget`);
- device owner keys, through the shopper's devices;
- delayed jobs (rule firings, deferrals, delivery retries), found by reading the set;
- the interaction log (`user_id` field), the rejected stream and the dead-letter stream
  (`users` field, `store.redaction.names_shopper`).

Late arrivals: a job or a deliver task already taken off the delayed set or the queue
when erasure runs finds nothing to act on. Firing drops, writing nothing, a job whose
shopper has neither profile nor device (`Firer`), and delivery drops a message whose
record is gone and takes it off `outbox:queued` (`MessageSender`), so neither brings the
shopper's keys back. Erasure removes what it can find as well, so the id does not wait
in Redis for them (a delayed job may be due in weeks).

The report holds counts only: it is kept in the result backend, where the id must not be.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from worker.shoppers.contacts import Contacts
from worker.shoppers.segment_index import SegmentIndex
from worker.store.client import StateRedis
from worker.store.delayed import DelayedJobs, Job
from worker.store.keys import Keys
from worker.store.redaction import names_shopper

_SCAN_CHUNK = 5_000

EntryFilter = Callable[[dict[str, str]], bool]


@dataclass
class ErasureReport:
    """How much one `forget_user` call removed (a repeat finds nothing left)."""

    keys_removed: int = 0
    messages_removed: int = 0
    devices_released: int = 0
    interest_entries_removed: int = 0
    segment_entries_removed: int = 0
    delayed_jobs_removed: int = 0
    log_entries_removed: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "keys_removed": self.keys_removed,
            "messages_removed": self.messages_removed,
            "devices_released": self.devices_released,
            "interest_entries_removed": self.interest_entries_removed,
            "segment_entries_removed": self.segment_entries_removed,
            "delayed_jobs_removed": self.delayed_jobs_removed,
            "log_entries_removed": dict(self.log_entries_removed),
        }


def forget_user(
    client: StateRedis, keys: Keys, contacts: Contacts, delayed: DelayedJobs, user_id: str
) -> ErasureReport:
    """Remove everything pushrec keeps about shopper `user_id` (as stored:
    `contract.canonical_id`), as listed in the module docstring. Safe to repeat."""
    report = ErasureReport()
    user = keys.user(user_id)
    mids = _message_ids(client, keys, user_id)
    report.delayed_jobs_removed = delayed.drop(_names(user_id, mids))
    pipe = client.pipeline(transaction=False)
    for mid in sorted(mids):
        k = keys.message(mid)
        pipe.delete(k.record, k.state, k.attempts, k.outcome)
    for mid in mids:
        pipe.zrem(keys.outbox_queued(keys.shard(mid)), mid)
    report.messages_removed = sum(1 for n in pipe.execute()[: len(mids)] if n)

    report.devices_released = contacts.release_all(user_id)
    items: list[str] = client.zrange(user.interests, 0, -1)  # type: ignore[assignment]
    if items:
        pipe = client.pipeline(transaction=False)
        for item in items:
            pipe.zrem(keys.interested(item), user_id)
        report.interest_entries_removed = sum(pipe.execute())
    report.segment_entries_removed = SegmentIndex(client, keys).forget(user_id)
    report.keys_removed = sum(1 for key in user.all() if client.delete(key))
    report.log_entries_removed = {
        "interactions": _strip_stream(
            client,
            keys.interaction_log(keys.shard(user_id)),
            lambda f: f.get("user_id") == user_id,
        ),
        "rejected": _strip_stream(client, keys.rejected_log, lambda f: names_shopper(f, user_id)),
        "dead_letters": _strip_stream(
            client, keys.dead_letters, lambda f: names_shopper(f, user_id)
        ),
    }
    return report


def _message_ids(client: StateRedis, keys: Keys, user_id: str) -> set[str]:
    """The shopper's messages: those indexed on the shopper and those their decisions
    name (decisions written before the index existed)."""
    user = keys.user(user_id)
    pipe = client.pipeline(transaction=False)
    pipe.zrange(user.messages, 0, -1)
    pipe.lrange(user.decisions, 0, -1)
    indexed, decisions = pipe.execute()
    mids = set(indexed)
    for raw in decisions:
        mid = json.loads(raw).get("message_id")
        if mid:
            mids.add(str(mid))
    return mids


def _names(user_id: str, mids: set[str]) -> Callable[[Job], bool]:
    """Whether a delayed job is about the shopper: a firing names them, a delivery retry
    one of their messages."""

    def match(job: Job) -> bool:
        kw = job.kwargs
        if kw.get("user_id") == user_id or kw.get("message_id") in mids:
            return True
        return any(j.get("user_id") == user_id for j in kw.get("jobs", ())) or bool(
            mids.intersection(kw.get("message_ids", ()))
        )

    return match


def _strip_stream(client: StateRedis, key: str, matches: EntryFilter) -> int:
    """XDEL every entry of stream `key` for which `matches(fields)`; returns how many."""
    removed = 0
    start = "-"
    while True:
        rows: list[tuple[str, dict[str, str]]] = client.xrange(  # type: ignore[assignment]
            key, min=start, max="+", count=_SCAN_CHUNK
        )
        if not rows:
            return removed
        doomed = [rid for rid, fields in rows if matches(fields)]
        if doomed:
            removed += int(client.xdel(key, *doomed))
        if len(rows) < _SCAN_CHUNK:
            return removed
        start = "(" + rows[-1][0]
