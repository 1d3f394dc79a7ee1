"""Run one function over a stream of items with a fixed number of calls in flight (threads).

Items are taken from the iterator only when a worker is free, so a slow producer (attribution) or a
long list of files is never read ahead. The first call that raises stops new calls; the calls in
flight finish (each graph's write is its own transaction, so nothing is left half written) and the
exception is raised. With one worker everything runs in order in the calling thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def run_concurrently(func: Callable[[T], R], items: Iterable[T], *, workers: int = 1) -> list[R]:
    """`func(item)` for every item, at most `workers` (default 1) at once; results in completion order."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if workers == 1:
        return [func(item) for item in items]
    results: list[R] = []
    pending: set[Future[R]] = set()

    def collect(futures: set[Future[R]]) -> None:
        for future in futures:
            results.append(future.result())  # re-raises the call's exception

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="writer") as pool:
        try:
            for item in items:  # the next item is read only once a worker is free
                pending.add(pool.submit(func, item))
                if len(pending) >= workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    collect(done)
            done, pending = wait(pending)
            collect(done)
        finally:
            wait(pending)  # on an error: let the writes in flight commit or roll back
    return results
