"""Progress of a long loop (ingest's reads, the extraction, the affinity rows): a bar with the
rate and the time left on a terminal, a few plain lines elsewhere (a pipe, a log file, a pod, a
Kubeflow task whose output the local runner filters).

The plain lines have one form, :data:`LINE` (``extract: 40/80 images, 2.1 images/s, 19 s
left``), so a runner that reads a task's output can pick them out of it
(:mod:`goggles.kubeflow.runner`). A line is written when the loop crosses a quarter of its
total, at most one per :data:`MIN_SECONDS`, and never for a loop that ends sooner: at most
three lines for a loop, none for a quick one.
"""

from __future__ import annotations

import re
import sys
import time
from types import TracebackType
from typing import IO, Any

MIN_SECONDS = 5.0
"""The least time between two plain lines, and before the first."""

LINE = re.compile(r"^(?P<stage>[a-z][\w -]*): \d+/\d+ \w+, [\d.]+ \w+/s, \d+ s left$")
"""A plain progress line."""


def plain_line(desc: str, done: int, total: int, unit: str, seconds: float) -> str:
    """``desc: done/total unit, rate unit/s, N s left`` (one :data:`LINE`)."""
    rate = done / seconds if seconds > 0 else 0.0
    left = (total - done) / rate if rate > 0 else 0.0
    return f"{desc}: {done}/{total} {unit}, {rate:.1f} {unit}/s, {left:.0f} s left"


class Progress:
    """Progress of ``total`` steps named ``desc`` (``unit`` each), written to ``stream``
    (default: standard error): a tqdm bar when it is a terminal, plain lines otherwise.
    ``enabled=False`` writes nothing."""

    def __init__(self, total: int | None, desc: str, unit: str = "images", *,
                 stream: IO[str] | None = None, enabled: bool = True):
        self.total, self.desc, self.unit = int(total or 0), desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.started = self.last = time.perf_counter()
        self._quarter = 0
        self._bar: Any = None
        self.enabled = enabled and self.total > 0
        if self.enabled and _is_terminal(self.stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit.rstrip("s") or unit,
                             file=self.stream, leave=False)

    def update(self, steps: int = 1) -> None:
        """``steps`` more done."""
        self.done += steps
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(steps)
            return
        quarter = 4 * self.done // self.total
        now = time.perf_counter()
        if quarter > self._quarter and self.done < self.total and now - self.last >= MIN_SECONDS:
            self._quarter = quarter
            self.last = now
            # the display itself, as tqdm's bar on a terminal: a line on the bar's stream,
            # which the runners' consoles read (a task's stderr), not a log record
            self.stream.write(plain_line(self.desc, self.done, self.total, self.unit,
                                         now - self.started) + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Remove the bar (the stage's own line says it ended)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
