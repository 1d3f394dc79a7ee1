"""The shared progress display: plain timestamped lines off a terminal, driven here by a fake clock."""

from __future__ import annotations

import io
import re

import pytest

from circuitbase.progress import Progress, format_seconds

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _progress(clock: FakeClock, stream: io.StringIO, **kwargs) -> Progress:
    return Progress("attribute", unit="graphs", stream=stream, clock=clock, heartbeat=False, **kwargs)


def test_lines_appear_only_when_the_interval_has_passed() -> None:
    clock, out = FakeClock(), io.StringIO()
    with _progress(clock, out, total=100) as progress:
        for _ in range(20):  # 20 items in 9.5 s: under the interval, nothing printed
            clock.now += 0.475
            progress.advance()
        assert out.getvalue() == ""
        clock.now += 0.5  # 10 s since the start, 21 items
        progress.advance(info="120 rows/s")
        lines = out.getvalue().splitlines()
        assert len(lines) == 1
        assert re.fullmatch(
            STAMP + r"attribute 21/100 \(21%\) graphs, 2\.10 graphs/s, 38s left \| 120 rows/s", lines[0]
        )
        for _ in range(19):  # 19 more in 9.5 s: still one line
            clock.now += 0.5
            progress.advance()
        assert len(out.getvalue().splitlines()) == 1
        clock.now += 0.5
        progress.advance()
        assert len(out.getvalue().splitlines()) == 2
        assert "attribute 41/100 (41%) graphs, 2.05 graphs/s, 29s left" in out.getvalue().splitlines()[1]
    last = out.getvalue().splitlines()[-1]
    assert re.fullmatch(STAMP + r"attribute done: 41/100 graphs in 20s, 2\.05 graphs/s \| 120 rows/s", last)


def test_a_slow_item_still_shows_on_tick_and_resumed_items_leave_the_rate() -> None:
    clock, out = FakeClock(), io.StringIO()
    with _progress(clock, out, total=10, completed=4) as progress:
        clock.now += 5
        progress.advance()
        progress.tick()
        assert out.getvalue() == ""
        clock.now += 95  # one item in 100 s; the heartbeat calls tick
        progress.tick()
        assert "attribute 5/10 (50%) graphs, 0.01 graphs/s, 8m20s left" in out.getvalue()
        progress.tick()  # no time passed: no second line
        assert len(out.getvalue().splitlines()) == 1


def test_unknown_total_disabled_and_failure() -> None:
    clock, out = FakeClock(), io.StringIO()
    with _progress(clock, out) as progress:
        clock.now += 12
        progress.advance(6)
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("attribute 6 graphs, 0.50 graphs/s, 12s so far")
    assert lines[1].endswith("attribute done: 6 graphs in 12s, 0.50 graphs/s")

    quiet = io.StringIO()
    with _progress(clock, quiet, total=3, enabled=False) as progress:
        clock.now += 60
        progress.advance()
        progress.note("a note")
    assert quiet.getvalue() == ""

    out = io.StringIO()
    with pytest.raises(RuntimeError), _progress(clock, out, total=3) as progress:
        progress.note("prompt p1: fewer nodes")
        raise RuntimeError("boom")
    first, last = out.getvalue().splitlines()
    assert first.endswith("prompt p1: fewer nodes") and "attribute stopped: 0/3 graphs" in last


def test_bar_on_a_terminal_writes_no_plain_lines() -> None:
    clock, out = FakeClock(), io.StringIO()
    with _progress(clock, out, total=5, tty=True) as progress:
        for _ in range(5):
            clock.now += 30
            progress.advance()
    assert not re.search(STAMP + "attribute", out.getvalue())


def test_format_seconds_and_bad_interval() -> None:
    assert [format_seconds(s) for s in (4.4, 65, 3725)] == ["4s", "1m05s", "1h02m"]
    with pytest.raises(ValueError, match="interval must be positive"):
        Progress("x", interval=0)
