"""Bounded concurrency for I/O-bound loops: at most N calls in flight, results in input order,
progress shown as a bar on a terminal and as a few plain lines elsewhere
(:mod:`goggles.io.progress`)."""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable, Iterator, Sized
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from goggles.io.progress import Progress

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def map_bounded(function: Callable[[T], R], items: Iterable[T], *, max_concurrency: int,
                desc: str | None = None, unit: str = "item", total: int | None = None,
                cost: Callable[[T], int] | None = None,
                max_cost: int | None = None) -> Iterator[R]:
    """Yield ``function(item)`` for each item, in order, with at most ``max_concurrency`` calls
    running (threads) and at most that many results held; with ``cost`` and ``max_cost``, also
    at most ``max_cost`` of cost in flight (e.g. bytes: an item costlier than the budget runs
    alone). ``desc`` shows the progress (:class:`goggles.io.progress.Progress`)."""
    if total is None and isinstance(items, Sized):
        total = len(items)
    bar = Progress(total, desc or "", unit, enabled=bool(desc))

    def advance() -> None:
        bar.update(1)

    try:
        if max_concurrency <= 1:
            for item in items:
                result = function(item)
                advance()
                yield result
            return
        with ThreadPoolExecutor(max_workers=max_concurrency,
                                thread_name_prefix="goggles-io") as pool:
            window: collections.deque[tuple[Future[R], int]] = collections.deque()
            in_flight = 0
            for item in items:
                weight = cost(item) if cost is not None else 0
                while window and (len(window) >= max_concurrency or (
                        max_cost is not None and in_flight + weight > max_cost)):
                    future, done_weight = window.popleft()
                    in_flight -= done_weight
                    result = future.result()
                    advance()
                    yield result
                window.append((pool.submit(function, item), weight))
                in_flight += weight
            while window:
                future, _ = window.popleft()
                result = future.result()
                advance()
                yield result
    finally:
        bar.close()
