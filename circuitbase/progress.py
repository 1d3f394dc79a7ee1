"""Progress of long steps, for every part of circuitbase: a live bar on a terminal, timestamped lines in logs.

On a terminal (the stream is a TTY) `Progress` draws a rich bar. Otherwise (a job log, a pipe) it writes a
plain line such as

    2025-01-31 12:00:10 attribute 40/100 (40%) 3.98 graphs/s, 15s left | 120,000 rows/s

when at least `interval` seconds (default 10) have passed since the last one: on an update, or from a
background heartbeat while one item takes longer than that; nothing per item in between. A last line
says how the step ended.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO

DEFAULT_INTERVAL = 10.0


def format_seconds(seconds: float) -> str:
    """`1h02m`, `3m05s` or `42s`."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """Progress of one step of `total` items (None: unknown) counted in `unit`.

    Args:
        description: what the step is (first word of each line). total: items in the step (default None:
        no percentage or time left). unit: what an item is (default "items"). completed: items already
        done before this run, left out of the rate (default 0). enabled: False shows nothing (default
        True). interval: seconds between plain lines (default 10). stream: where to write (default
        sys.stderr). tty: draw the bar (default: whether `stream` is a terminal). clock: seconds now
        (default time.monotonic; tests pass a fake one). heartbeat: write due lines from a background
        thread too, so a slow item still shows (default True).
    Use as a context manager; `advance`/`skip`/`update` report items, `note` writes a message.
    """

    def __init__(
        self,
        description: str,
        *,
        total: int | None = None,
        unit: str = "items",
        completed: int = 0,
        enabled: bool = True,
        interval: float = DEFAULT_INTERVAL,
        stream: TextIO | None = None,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        heartbeat: bool = True,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"progress interval must be positive, got {interval}")
        self.description, self.total, self.unit = description, total, unit
        self.completed = self._first = completed
        self.info = ""
        self.enabled, self.interval, self.clock = enabled, interval, clock
        self.stream = stream if stream is not None else sys.stderr
        self.tty = tty if tty is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self._heartbeat = heartbeat
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: Any = None
        self._task: Any = None
        self._started = self._last = 0.0

    # ---- figures -------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return self.clock() - self._started

    def rate(self) -> float:
        """Items per second in this run (0 before any)."""
        elapsed = self.elapsed()
        return (self.completed - self._first) / elapsed if elapsed > 0 else 0.0

    def remaining(self) -> float | None:
        """Expected seconds left (None with no total or no rate yet)."""
        rate = self.rate()
        if self.total is None or rate <= 0:
            return None
        return max(0, self.total - self.completed) / rate

    def line(self) -> str:
        """The plain progress line (without the timestamp)."""
        done = f"{self.completed:,}" if self.total is None else f"{self.completed:,}/{self.total:,}"
        if self.total:
            done += f" ({100 * self.completed / self.total:.0f}%)"
        left = self.remaining()
        when = (
            f"{format_seconds(left)} left" if left is not None else f"{format_seconds(self.elapsed())} so far"
        )
        text = f"{self.description} {done} {self.unit}, {self.rate():,.2f} {self.unit}/s, {when}"
        return f"{text} | {self.info}" if self.info else text

    # ---- reporting -----------------------------------------------------------------------------

    def __enter__(self) -> Progress:
        self._started = self._last = self.clock()
        if not self.enabled:
            return self
        if self.tty:
            self._bar = _rich_bar(self.stream)
            self._bar.start()
            self._task = self._bar.add_task(
                self.description, total=self.total, completed=self.completed, rate="-", info=""
            )
        elif self._heartbeat:
            self._thread = threading.Thread(target=self._beat, name="progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._bar is not None:
            self._bar.stop()
        elif self.enabled:
            ending = "done" if kind is None else "stopped"
            total = f" {self.completed:,}" if self.total is None else f" {self.completed:,}/{self.total:,}"
            self._write(
                f"{self.description} {ending}:{total} {self.unit} in {format_seconds(self.elapsed())}, "
                f"{self.rate():,.2f} {self.unit}/s" + (f" | {self.info}" if self.info else "")
            )

    def advance(self, n: int = 1, *, info: str | None = None) -> None:
        """`n` more items done; `info` (optional) replaces the extra text shown after the figures."""
        self.update(completed=self.completed + n, info=info)

    def skip(self, n: int = 1) -> None:
        """`n` items found done without work (resumed runs): counted as done, left out of the rate."""
        with self._lock:
            self._first += n
        self.advance(n)

    def update(self, *, completed: int | None = None, info: str | None = None) -> None:
        """Set the items done and/or the extra text; writes a plain line when one is due."""
        with self._lock:
            if completed is not None:
                self.completed = completed
            if info is not None:
                self.info = info
            if self._bar is not None:
                self._bar.update(
                    self._task,
                    completed=self.completed,
                    rate=f"{self.rate():,.2f} {self.unit}/s",
                    info=self.info,
                )
        self.tick()

    def tick(self) -> None:
        """Write a plain line if `interval` seconds have passed since the last one."""
        if not self.enabled or self._bar is not None:
            return
        with self._lock:
            now = self.clock()
            if now - self._last < self.interval:
                return
            self._last = now
            text = self.line()
        self._write(text)

    def note(self, message: str) -> None:
        """Write a message (above the bar on a terminal; a timestamped line otherwise)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(message, markup=False, highlight=False)
        else:
            self._write(message)

    def _write(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self.stream.write(f"{stamp} {text}\n")
        self.stream.flush()

    def _beat(self) -> None:
        while not self._stop.wait(min(1.0, self.interval)):
            self.tick()


def _rich_bar(stream: TextIO) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as RichProgress

    return RichProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=Console(file=stream),
    )
