"""Progress: a bar on a terminal, at most three plain lines elsewhere, none for a quick loop."""

from __future__ import annotations

import io

import pytest

from goggles.io import progress
from goggles.io.progress import LINE, Progress, plain_line


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_at_the_quarters_with_rate_and_time_left(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "MIN_SECONDS", 0.0)
    stream = io.StringIO()
    with Progress(8, "extract", "images", stream=stream) as bar:
        for _ in range(8):
            bar.update()
    lines = stream.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "extract: 2/8 images", "extract: 4/8 images", "extract: 6/8 images"]
    assert all(LINE.match(line) for line in lines), lines


def test_a_quick_loop_writes_nothing() -> None:
    stream = io.StringIO()
    with Progress(1000, "extract", stream=stream) as bar:
        for _ in range(1000):
            bar.update()
    assert stream.getvalue() == ""


def test_a_terminal_gets_a_bar_not_lines() -> None:
    stream = _Terminal()
    with Progress(10, "affinity", stream=stream) as bar:
        bar.update(10)
    text = stream.getvalue()
    assert "affinity" in text and "\r" in text
    assert not any(LINE.match(line) for line in text.splitlines())


def test_plain_line_reads_rate_and_time_left() -> None:
    line = plain_line("ingest", 20, 80, "images", 10.0)
    assert line == "ingest: 20/80 images, 2.0 images/s, 30 s left" and LINE.match(line)
