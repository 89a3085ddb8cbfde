"""goggles.io.concurrency.map_bounded: order, the bound on calls in flight, laziness, errors."""

from __future__ import annotations

import threading
import time

import pytest

from goggles.io.concurrency import map_bounded


def test_results_come_in_input_order_whatever_finishes_first() -> None:
    def slow_for_small(x: int) -> int:
        time.sleep(0.002 * (10 - x))
        return x * x

    assert list(map_bounded(slow_for_small, range(10), max_concurrency=4)) == \
        [x * x for x in range(10)]


@pytest.mark.parametrize("limit", [1, 3, 8])
def test_never_more_calls_in_flight_than_the_limit(limit: int) -> None:
    lock = threading.Lock()
    running, peak = 0, 0

    def work(x: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.005)
        with lock:
            running -= 1
        return x

    assert list(map_bounded(work, range(40), max_concurrency=limit)) == list(range(40))
    assert peak <= limit
    if limit > 1:
        assert peak > 1  # it does run concurrently


def test_lazy_consumer_bounds_the_work_started() -> None:
    started: list[int] = []

    def work(x: int) -> int:
        started.append(x)
        return x

    results = map_bounded(work, range(100), max_concurrency=4)
    assert next(results) == 0
    time.sleep(0.05)
    assert len(started) <= 5  # the window, plus the one submitted before the first yield
    results.close()


def test_one_at_a_time_runs_in_the_calling_thread() -> None:
    threads = list(map_bounded(lambda _: threading.current_thread(), range(3),
                               max_concurrency=1))
    assert threads == [threading.current_thread()] * 3


def test_errors_propagate() -> None:
    def fail_on_three(x: int) -> int:
        if x == 3:
            raise ValueError("three")
        return x

    with pytest.raises(ValueError, match="three"):
        list(map_bounded(fail_on_three, range(10), max_concurrency=4))


def test_progress_is_written_as_plain_lines_off_a_terminal(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from goggles.io import progress

    monkeypatch.setattr(progress, "MIN_SECONDS", 0.0)
    list(map_bounded(lambda x: x, list(range(20)), max_concurrency=2, desc="reading",
                     unit="obj"))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and all(progress.LINE.match(line) for line in lines)
    assert lines[0].startswith("reading: 5/20 obj, ")


def test_never_more_cost_in_flight_than_the_budget() -> None:
    """Bytes in flight, not requests, bound memory: with 16 slots and a 100-byte budget, objects
    of 40 bytes run at most two at a time, and one larger than the budget runs alone."""
    sizes = [40] * 12 + [250] + [40] * 12
    lock = threading.Lock()
    running: list[int] = []
    peaks: list[list[int]] = []

    def read(index: int) -> int:
        with lock:
            running.append(sizes[index])
            peaks.append(list(running))
        time.sleep(0.004)
        with lock:
            running.remove(sizes[index])
        return index

    out = list(map_bounded(read, range(len(sizes)), max_concurrency=16,
                           cost=lambda i: sizes[i], max_cost=100))
    assert out == list(range(len(sizes)))
    assert max(sum(p) for p in peaks if 250 not in p) <= 100
    assert all(p == [250] for p in peaks if 250 in p)  # the large one alone
    assert max(len(p) for p in peaks) == 2  # and it does run two at a time
