"""The index a worker process serves, swapped for a newer version between tasks.

Each process loads the published artifact once, after the fork, with FAISS on one
thread. Between tasks it checks (at most every few seconds, one Redis GET) which
version should serve; a new version loads on a background thread, so no task waits for
it, and replaces the old one at the next task boundary. A worker process also `follow`s
the pointer while idle (a daemon thread makes the same check every few seconds), so a
process that gets no task for a while still loads and swaps in a new version and its
next task does not run on the old one. The store (`indexing.stores`:
a folder, or an object store pulled into this host's cache) hands over a verified local
folder. A version the store does not have yet (an upload not finished, an eventually
consistent listing) or cannot serve now (network, 5xx) is tried again with capped,
jittered backoff, never refused. A version that fails its manifest or checksums is refused
(logged, remembered with the store's `marker` of it) and the old index keeps serving; it is
tried again only once the store holds something else under its name (published again). Under
`--pool threads` the swap happens at one thread's task boundary while other threads may be
mid-task; each lookup reads the index once, so it sees one version.

Each check also notes the version served in `index:serving` (wall-clock time), so
housekeeping never prunes a version a process may still map (`service/housekeeping.py`).

The same check reads the catalog's change counter (one pipelined round trip for both), and
the index served follows new and sold-out items between builds (`live_items.py`): a
version loaded is brought up to date before it serves, the served one catches up when the
counter moved.

A version is evaluated with as much of a shopper's history as its manifest says
(`history_items` items of the accumulated history, or for older versions the latest
`history_events` events); the workers' state keeps what their settings bound
(`StoredHistory`). A version asking for more than is stored still loads and serves with
what is stored, but its load says so: a warning naming both values, the counter
`index.history_short`, and `IndexHolder.history_shortfall`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass

from indexing import (
    ArtifactError,
    ArtifactNotFoundError,
    ArtifactStore,
    LoadedIndex,
    StoreUnavailableError,
    configure_threads,
    load_index,
)
from worker.firing.live_items import LiveItems
from worker.settings import Settings
from worker.store.client import StateRedis
from worker.store.errors import TRANSIENT, describe
from worker.store.keys import Keys
from worker.store.metrics import Metrics

log = logging.getLogger(__name__)

# A version not available yet is tried again after 1, 2, 4 ... s (full jitter), at most 60 s.
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0
_NOT_YET = (ArtifactNotFoundError, StoreUnavailableError, OSError)


@dataclass(frozen=True)
class StoredHistory:
    """How much of a shopper's history the workers' state keeps (their settings)."""

    history_items: int  # PUSHREC_HISTORY_ITEMS_MAX: items of the accumulated history
    recent_events: int  # PUSHREC_RECENT_ITEMS_MAX: events of the recent list

    @classmethod
    def of(cls, settings: Settings) -> StoredHistory:
        return cls(settings.history_items_max, settings.recent_items_max)

    def shortfall(self, index: LoadedIndex) -> str | None:
        """What `index` was evaluated with that the state does not keep, in words; None
        when the state keeps at least that much."""
        if index.history_events is None:
            if index.history_items <= self.history_items:
                return None
            return (
                f"index {index.version} was evaluated with {index.history_items} items of "
                f"a shopper's history (history_items) but the workers store "
                f"{self.history_items} (PUSHREC_HISTORY_ITEMS_MAX): serving it with the "
                f"{self.history_items} stored; set PUSHREC_HISTORY_ITEMS_MAX to at least "
                f"{index.history_items} to serve it as evaluated"
            )
        if index.history_events <= self.recent_events:
            return None
        return (
            f"index {index.version} was evaluated with a shopper's latest "
            f"{index.history_events} events (history_events) but the workers keep "
            f"{self.recent_events} (PUSHREC_RECENT_ITEMS_MAX): serving it with the "
            f"{self.recent_events} kept"
        )


class IndexHolder:
    """One per worker process; its pool threads may call `between_tasks` concurrently.

    `stored`: what the workers' state keeps of a shopper's history, to check each version
    loaded against (None: no check); `metrics`: where the check counts a short one."""

    def __init__(
        self,
        store: ArtifactStore,
        client: StateRedis,
        keys: Keys,
        check_every_s: float = 5.0,
        *,
        stored: StoredHistory | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._client = client
        self._keys = keys
        self._check_every_s = check_every_s
        self._stored = stored
        self._metrics = metrics
        self._live = LiveItems(client, keys)
        self._index: LoadedIndex | None = None
        self._seen = 0  # the last catalog mark applied to `_index`
        self._ready: tuple[LoadedIndex, int] | None = None
        self._loader: threading.Thread | None = None
        self._refused: dict[str, str] = {}  # version -> the store's marker when refused
        self._retry_at: dict[str, tuple[float, int]] = {}  # version -> (monotonic s, tries)
        self._last_check = float("-inf")
        self._lock = threading.Lock()  # the swap and catching up, from several pool threads
        self._checking = threading.Lock()  # one thread checks for a new version at a time
        self._follower: threading.Thread | None = None
        self._closed = threading.Event()
        configure_threads()

    @property
    def index(self) -> LoadedIndex | None:
        """The index to use for the current task (None until one was ever published)."""
        return self._index

    @property
    def version(self) -> str | None:
        return self._index.version if self._index is not None else None

    @property
    def history_shortfall(self) -> str | None:
        """Why the index served gets less of a shopper's history than it was evaluated
        with (`StoredHistory.shortfall`), or None."""
        index = self._index
        if index is None or self._stored is None:
            return None
        return self._stored.shortfall(index)

    def wanted_version(self) -> str | None:
        """The Redis pointer if set, else the store's `current`."""
        return self._poll()[0]

    def _poll(self) -> tuple[str | None, int]:
        """The version wanted and the catalog's change counter, in one round trip, which
        also notes the version this process serves (housekeeping never prunes it)."""
        pipe = self._client.pipeline(transaction=False)
        pipe.get(self._keys.index_version)
        pipe.get(self._keys.live_seq)
        if (serving := self.version) is not None:
            pipe.zadd(self._keys.index_serving, {serving: time.time()})
        pointer, seq, *_ = pipe.execute()
        if pointer:
            return str(pointer), int(seq or 0)
        try:
            return self._store.current_version(), int(seq or 0)
        except ArtifactError:
            return None, int(seq or 0)

    def load_now(self) -> None:
        """Load the wanted version synchronously (process start)."""
        wanted = self.wanted_version()
        if wanted is not None and wanted != self.version:
            self._load(wanted)
            with self._lock:
                self._swap()

    def between_tasks(self, now: float | None = None) -> None:
        """Swap in a finished load; catch up with the catalog if its counter moved; start
        loading a newer version if one is wanted. While one pool thread checks (a Redis
        read), the others go on without waiting."""
        with self._lock:
            self._swap()
        now = time.monotonic() if now is None else now
        if now - self._last_check < self._check_every_s:
            return
        if not self._checking.acquire(blocking=False):
            return
        try:
            self._last_check = now
            wanted, seq = self._poll()
            if seq > self._seen:
                self.catch_up()
            if self._loader is not None and self._loader.is_alive():
                return
            if wanted is None or wanted == self.version:
                return
            if now < self._retry_at.get(wanted, (float("-inf"), 0))[0]:
                return
            self._loader = threading.Thread(
                target=self._load, args=(wanted,), name="index-loader", daemon=True
            )
            self._loader.start()
        finally:
            self._checking.release()

    def follow(self) -> None:
        """Make the between-tasks check every few seconds on a daemon thread as well, for
        the times no task runs (worker processes; once is enough)."""
        with self._lock:
            if self._follower is None and not self._closed.is_set():
                self._follower = threading.Thread(
                    target=self._follow, name="index-follower", daemon=True
                )
                self._follower.start()

    def _follow(self) -> None:
        while not self._closed.wait(self._check_every_s):
            try:
                self.between_tasks()
            except TRANSIENT as exc:  # Redis away: the next check (or task) tries again
                log.debug("index check failed: %s", describe(exc))
            except Exception:
                log.exception("index check failed")

    def close(self) -> None:
        """Stop following (process shutdown)."""
        self._closed.set()

    def catch_up(self) -> None:
        """Apply the catalog marks the served index has not seen (new items in, sold-out
        items out); its lookups running in other threads meanwhile see either state."""
        with self._lock:
            if self._index is not None:
                self._seen = self._live.catch_up(self._index, self._seen)

    def wait_loaded(self, timeout: float = 60.0) -> None:
        """Block until a background load finishes, then swap (tests, start-up)."""
        if self._loader is not None:
            self._loader.join(timeout)
        with self._lock:
            self._swap()

    def _swap(self) -> None:
        if self._ready is not None:
            old = self._index
            (self._index, self._seen), self._ready = self._ready, None
            log.info("serving index %s (was %s)", self._index.version, old and old.version)

    def refused(self, version: str) -> bool:
        """Whether `version` was refused (and not published again since)."""
        return version in self._refused

    def _load(self, version: str) -> None:
        marker = ""
        try:
            # Read before the fetch: a version published again meanwhile differs from it.
            marker = self._store.marker(version)
            if self._refused.get(version) == marker:
                return  # the very files refused before
            fetched = self._store.fetch(version)
            index = load_index(fetched.folder, version, verify=False)  # fetch verified sha256s
        except _NOT_YET as exc:
            delay = self._retry_later(version)
            log.warning("index %s not available yet, next try in %.1f s: %s", version, delay, exc)
            return
        except ArtifactError as exc:
            self._refused[version] = marker
            self._retry_at.pop(version, None)
            log.error("refused index %s, keeping %s: %s", version, self.version, exc)
            return
        self._refused.pop(version, None)
        self._retry_at.pop(version, None)
        try:
            seen = self._live.load(index)
        except TRANSIENT as exc:  # not refused: the next check loads it again
            log.warning("index %s not swapped in: catalog state unreadable: %s",
                        version, describe(exc))  # fmt: skip
            return
        self._check_history(index)
        self._ready = (index, seen)

    def _check_history(self, index: LoadedIndex) -> None:
        """Say so when the state keeps less of a shopper's history than `index` was
        evaluated with; it serves all the same, with what is stored."""
        short = self._stored.shortfall(index) if self._stored is not None else None
        if short is None:
            return
        log.warning("%s", short)
        if self._metrics is not None:
            try:
                self._metrics.add({"index.history_short": 1})
            except TRANSIENT as exc:  # the warning stands; the version serves
                log.debug("index.history_short not counted: %s", describe(exc))

    def _retry_later(self, version: str) -> float:
        tries = self._retry_at.get(version, (0.0, 0))[1]
        delay = random.uniform(0, min(RETRY_MAX_S, RETRY_FIRST_S * 2**tries))
        self._retry_at[version] = (time.monotonic() + delay, tries + 1)
        return delay
