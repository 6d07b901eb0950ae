"""A campaign's dry run fired by a pool of processes: firing a shopper is Python work
(reads parsed, items picked, policy, templates rendered: about 1.5-2.5 ms of one core), so
a large audience is split over the machine's cores.

Each process opens its own runtime from the settings (Redis connections, the index) once,
in the pool's initializer, and fires the chunks it is given with
`campaigning.dry_run.fire_chunk`; the parent adds their tallies up. Processes are spawned,
not forked, so none inherits the parent's connections or threads.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

from worker.campaigning.dry_run import ChunkFirer, DryChunk, DryTally, fire_chunk
from worker.service.runtime import Runtime
from worker.settings import Settings

# The pool process's own runtime, opened by `_open` (the initializer) and kept for the
# process's life: the one way a ProcessPoolExecutor hands state to its tasks.
_runtime: list[Runtime] = []


def pooled(settings: Settings, workers: int) -> ChunkFirer:
    """A `ChunkFirer` that fires chunks on `workers` processes, yielding their tallies
    as they finish; the processes end when every chunk is fired."""

    def fire(chunks: list[DryChunk]) -> Iterator[DryTally]:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=max(1, min(workers, len(chunks))),
            mp_context=context,
            initializer=_open,
            initargs=(settings,),
        ) as pool:
            yield from pool.map(_fire, chunks)

    return fire


def _open(settings: Settings) -> None:
    rt = Runtime.open(settings)
    rt.firer()  # the index, loaded before the first chunk
    _runtime.append(rt)


def _fire(chunk: DryChunk) -> DryTally:
    rt = _runtime[0]
    return fire_chunk(rt.redis, rt.keys, rt.runs(), rt.firer(), chunk)
