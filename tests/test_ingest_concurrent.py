"""run_concurrently: at most `workers` calls at once, items read only as workers free up, first error wins."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from circuitbase.ingest.concurrent import run_concurrently


class Tracker:
    """Counts the calls in flight and the most seen at once; `fail_on` raises for that item."""

    def __init__(self, *, fail_on: int | None = None) -> None:
        self.lock = threading.Lock()
        self.running = self.most = 0
        self.started: list[int] = []
        self.finished: list[int] = []
        self.fail_on = fail_on

    def __call__(self, item: int) -> int:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.started.append(item)
        time.sleep(0.02)
        with self.lock:
            self.running -= 1
            self.finished.append(item)
        if item == self.fail_on:
            raise RuntimeError(f"item {item} failed")
        return item * item


@pytest.mark.parametrize("workers", [1, 3])
def test_every_item_once_and_never_more_than_workers_at_once(workers: int) -> None:
    tracker = Tracker()
    results = run_concurrently(tracker, range(12), workers=workers)
    assert sorted(results) == [i * i for i in range(12)]
    assert tracker.most == workers
    if workers == 1:
        assert tracker.started == list(range(12))  # in order, in the calling thread


def test_items_are_read_only_as_workers_free_up() -> None:
    read: list[int] = []
    tracker = Tracker()

    def items() -> Iterator[int]:
        for i in range(8):
            with tracker.lock:
                assert len(read) - len(tracker.finished) < 2, "read while both workers were busy"
            read.append(i)
            yield i

    run_concurrently(tracker, items(), workers=2)
    assert read == list(range(8))


def test_first_error_stops_new_calls_and_waits_for_those_in_flight() -> None:
    tracker = Tracker(fail_on=3)
    with pytest.raises(RuntimeError, match="item 3 failed"):
        run_concurrently(tracker, range(100), workers=2)
    assert len(tracker.started) < 10  # stopped soon after item 3, not run to the end
    assert sorted(tracker.finished) == sorted(tracker.started)  # nothing left running


def test_no_workers_is_refused() -> None:
    with pytest.raises(ValueError, match="workers must be at least 1, got 0"):
        run_concurrently(abs, [1], workers=0)
