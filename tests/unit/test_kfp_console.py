"""The local runner's console: kfp's log and task output boiled down to the stage lines, or all
of it (colour removed off a terminal) with -v. Fed kfp's own line formats."""

from __future__ import annotations

import io
import logging

import pytest

from goggles.kubeflow.console import TaskConsole

CYAN, GREEN, RESET = "\x1b[96m", "\x1b[92m", "\x1b[0m"


def _kfp_log() -> str:
    """What kfp.local writes for ingest, two extraction parts, the gather and evaluate."""
    def task(name: str, metadata: str, logs: str = "") -> str:
        return (f"12:00:00.000 - INFO - Executing task {CYAN}'{name}'{RESET}\n"
                "12:00:00.000 - INFO - Streamed logs:\n\n" + logs + "\n\n"
                f"12:00:01.000 - INFO - Task {CYAN}'{name}'{RESET} finished with status "
                f"{GREEN}SUCCESS{RESET}\n"
                f"12:00:01.000 - INFO - Task {CYAN}'{name}'{RESET} outputs:\n"
                f"    out: Dataset( name='out',\n                  uri='/x',\n"
                f"                  metadata={metadata} )\n" + "-" * 80 + "\n")

    return (task("list-source", "{'n_files': 12.0}")
            + task("ingest-part", "{'n_images': 7.0, 'start': 0.0, 'stop': 7.0}")
            + task("ingest-part", "{'n_images': 5.0, 'start': 7.0, 'stop': 13.0}")
            + task("join-manifest", "{'n_images': 12.0, 'n_rejected': 1.0, 'seconds': 0.3}")
            + task("extract-part", "{'features_computed': 6.0, 'features_reused': 0.0}",
                   "    extract: 3/6 images, 1.0 images/s, 3 s left\n    some chatter\n")
            + task("extract-part", "{'features_computed': 6.0, 'features_reused': 0.0}")
            + task("gather-features", "{'features_computed': 12.0, 'features_reused': 0.0, "
                                      "'num_prototypes': 40.0}")
            + task("affinity-shard", "{'start': 0.0, 'stop': 12.0}")
            + task("evaluate", "{'accuracy': 0.75}")
            + "12:00:09.000 - INFO - Pipeline 'goggles' finished with status SUCCESS\n")


def test_only_the_stage_lines_and_progress_go_on(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    console = TaskConsole(verbose=False, stream=stream)
    with caplog.at_level(logging.INFO, logger="goggles.console"):
        for chunk in _kfp_log().split("\n"):  # written in pieces, as print does
            console.write(chunk + "\n")
    lines = [record.getMessage() for record in caplog.records]
    assert stream.getvalue() == ""
    assert [line.split()[0] for line in lines] == [
        "ingest", "ingest", "extract", "extract:", "extract", "affinity", "affinity",
        "evaluate", "evaluate"]
    assert lines[1].endswith(": 12 images accepted, 1 rejected")
    assert lines[3] == "extract: 3/6 images, 1.0 images/s, 3 s left"
    assert lines[4].endswith(": features of 12 images computed, 0 reused, 40 prototypes")
    assert lines[6].endswith(": 12 images × 40 prototypes")
    assert lines[8].endswith(": accuracy 0.750")
    assert any("some chatter" in line for line in console.lines)  # kept for a failure


def test_verbose_passes_everything_on_without_colour_off_a_terminal() -> None:
    stream = io.StringIO()
    console = TaskConsole(verbose=True, stream=stream)
    console.write(_kfp_log())
    assert "Executing task 'extract-part'" in stream.getvalue()
    assert "some chatter" in stream.getvalue() and "\x1b[" not in stream.getvalue()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_progress_updates_one_line_in_place(
        caplog: pytest.LogCaptureFixture) -> None:
    stream = _Terminal()
    console = TaskConsole(verbose=False, stream=stream)
    with caplog.at_level(logging.INFO, logger="goggles.console"):
        console.write(_kfp_log())
    shown = stream.getvalue()
    assert "\rextract: 3/6 images, 1.0 images/s, 3 s left\x1b[K" in shown
    after = shown.split("3 s left\x1b[K", 1)[1]
    assert after.startswith("\r\x1b[K")  # cleared before the next line
    assert not any("3/6" in record.getMessage() for record in caplog.records)
