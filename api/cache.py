"""A cache of expensive read-only results (set comparisons, a feature's graphs and neighbours, graph views)
for one state of the database.

1. Each entry is stored under the state token the request read before computing it
   (`Repository.state_token`), and served only to requests that read the same token. A write that lands
   between the token read and the computation makes the entry newer than its token, never older; the
   next request reads the new token and computes afresh.
2. Seeing a new token drops every entry of the older ones, so no result outlives the state it was
   computed for. No token (an analysis step is running, its results half rewritten): nothing is cached.
   The token covers loaded graphs, finished ingest jobs (which write feature labels after their graphs),
   analysis runs and the API's own writes of labels and supernodes (`Repository.state_token`). Hand
   edits that leave the token as it was (deleting a graph and loading another of exactly its size) are
   not seen: restart the server after them.
3. The entries a request misses are computed together, by one call (one query for a DataLoader batch);
   requests missing the same entries at once share that computation, and a failed one is not kept. At
   most `max_entries` entries, of sizes summing to at most `max_size`, are kept, the least recently used
   dropped first; an entry's size is `size(result)` (a list: its length; a graph view: its nodes and
   edges), counted once it is computed.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

from anyio import to_thread

T = TypeVar("T")


def unit_size(_result: Any) -> int:
    """The default entry size: every result counts 1."""
    return 1


class ResultCache:
    """Results of blocking read-only computations by (state token, key); see the module docstring."""

    def __init__(self, *, max_entries: int = 4096, max_size: int = 1_000_000) -> None:
        self.max_entries, self.max_size = max_entries, max_size
        self._state: Hashable | None = None
        self._entries: OrderedDict[Hashable, asyncio.Future[Any]] = OrderedDict()
        self._sizes: dict[Hashable, int] = {}  # of the computed entries still kept
        self._size = 0  # their sum

    async def get_many(
        self,
        keys: Sequence[Hashable],
        compute: Callable[[list[Hashable]], dict[Hashable, T]],
        *,
        state: Hashable | None,
        size: Callable[[T], int] = unit_size,
    ) -> list[T]:
        """The results for `keys` in database state `state`; the ones not cached come from one
        `compute(missing keys)` call on a worker thread, which returns them by key; `size(result)`
        (default: 1) is what each counts towards `max_size`."""
        if state is None:
            found = await to_thread.run_sync(compute, list(dict.fromkeys(keys)))
            return [found[k] for k in keys]
        if state != self._state:
            self._state = state
            self._entries.clear()
            self._sizes.clear()
            self._size = 0
        missing = [k for k in dict.fromkeys(keys) if k not in self._entries]
        if missing:
            loop = asyncio.get_running_loop()
            pending = {k: loop.create_future() for k in missing}
            self._entries.update(pending)
            batch = asyncio.ensure_future(to_thread.run_sync(compute, missing))
            batch.add_done_callback(lambda done: self._settle(pending, done, size))
        entries = [self._entries[k] for k in keys]
        for k in keys:
            self._entries.move_to_end(k)
        self._evict()
        return list(await asyncio.shield(asyncio.gather(*entries)))

    async def get(
        self,
        key: Hashable,
        compute: Callable[[], T],
        *,
        state: Hashable | None,
        size: Callable[[T], int] = unit_size,
    ) -> T:
        """The result of `compute()` for `key` in database state `state` (see `get_many`)."""
        return (await self.get_many([key], lambda _missing: {key: compute()}, state=state, size=size))[0]

    def _settle(
        self,
        pending: dict[Hashable, asyncio.Future[Any]],
        done: asyncio.Future[Any],
        size: Callable[[Any], int],
    ) -> None:
        """Resolve the entries one batch computed and count the sizes of those still kept; if it failed,
        fail them and forget them."""
        try:
            found = done.result()
            results = {key: found[key] for key in pending}
        except (Exception, asyncio.CancelledError) as exc:
            for key, entry in pending.items():
                entry.set_exception(exc)
                if self._entries.get(key) is entry:
                    del self._entries[key]
            return
        for key, entry in pending.items():
            entry.set_result(results[key])
            if self._entries.get(key) is entry:
                self._sizes[key] = size(results[key])
                self._size += self._sizes[key]
        self._evict()

    def _evict(self) -> None:
        """Drop the least recently used entries while more than `max_entries` or `max_size` are kept (the
        one most recently used stays, whatever its size)."""
        while len(self._entries) > self.max_entries or (
            self._size > self.max_size and len(self._entries) > 1
        ):
            key, _entry = self._entries.popitem(last=False)
            self._size -= self._sizes.pop(key, 0)
