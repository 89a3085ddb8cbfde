"""Crash-resume: a run killed (SIGKILL, a real signal to a real process) during the affinity stage
and then during inference finishes on rerun with labels identical to an uninterrupted run, and
says which finished work it reused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.data]


def command(source: Path, out: Path) -> list[str]:
    # -v: the stage records' "running"/"reusing" messages are goggles' INFO log, shown with -v
    return [sys.executable, "-m", "goggles.cli", "-v", "run", str(source), "--num-classes", "3",
            "--output", str(out), "--runner", "inprocess", "--backbone", "mobilenet_v2",
            "--shards", "4", "--seed", "5", "--device", "cpu", "--follow-symlinks"]


def run_until(source: Path, out: Path, trigger: str) -> str:
    """Start a run and SIGKILL it as soon as its log shows ``trigger``; returns the log."""
    process = subprocess.Popen(command(source, out), stderr=subprocess.PIPE, text=True,
                               stdout=subprocess.DEVNULL)
    assert process.stderr is not None
    lines = []
    for line in process.stderr:
        lines.append(line)
        if trigger in line:
            os.kill(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=120)
    log = "".join(lines)
    assert process.returncode == -signal.SIGKILL, f"the run ended before {trigger!r}:\n{log}"
    return log


def run_to_end(source: Path, out: Path) -> str:
    done = subprocess.run(command(source, out), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_killed_during_affinity_and_inference_resumes_identically(tmp_path: Path) -> None:
    from tests.conftest import cub_task

    source = cub_task(tmp_path, "001", "014", "087", limit=40)
    reference = tmp_path / "reference"
    run_to_end(source, reference)

    out = tmp_path / "out"
    stages = out / "artifacts" / "_stages"
    run_until(source, out, "running affinity-00002")
    assert (stages / "extract.json").is_file()
    assert (stages / "affinity-00001-of-00004.json").is_file()
    assert not (stages / "affinity-00002-of-00004.json").exists()
    assert not (out / "labels.parquet").exists()

    for _attempt in range(3):
        log = run_until(source, out, "running infer")
        if not (stages / "infer.json").exists():
            break
        (stages / "infer.json").unlink()  # inference beat the signal: try the kill again
    else:
        pytest.fail("inference always finished before the kill reached it")
    assert "reusing extract" in log and "reusing affinity-00001-of-00004" in log
    assert "running affinity-00002-of-00004" in log  # the shard that was killed is redone

    log = run_to_end(source, out)
    for stage in ("ingest", "extract", "affinity-00000-of-00004", "affinity-00003-of-00004"):
        assert f"reusing {stage}" in log, log
    assert "running infer" in log
    assert (out / "labels.parquet").read_bytes() == (reference / "labels.parquet").read_bytes()

    log = run_to_end(source, out)  # everything finished: a rerun redoes nothing
    records = "\n".join(line for line in log.splitlines() if "goggles.io.resume" in line)
    assert "reusing infer" in records and "running" not in records
    assert (out / "labels.parquet").read_bytes() == (reference / "labels.parquet").read_bytes()
