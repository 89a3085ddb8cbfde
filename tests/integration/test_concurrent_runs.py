"""Two `goggles run` started together into one output: one runs, the other fails at once naming
the lock, and the output holds one consistent run (the bucket version is in
test_object_storage.py, beside its servers)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def small_source(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    for index in range(12):
        kind = ("red", "green", "blue")[index % 3]
        (folder / kind).mkdir(parents=True, exist_ok=True)
        colour = {"red": (170, 0, 0), "green": (0, 170, 0), "blue": (0, 0, 170)}[kind]
        base = rng.integers(0, 80, (6, 6, 3)) + np.array(colour)
        Image.fromarray(base.clip(0, 255).astype(np.uint8)).resize(
            (48, 48), Image.Resampling.NEAREST).save(folder / kind / f"{index}.png")
    return folder


class Finished(NamedTuple):
    k: int
    pid: int
    returncode: int
    stderr: str


def race(source: str, output: str, env: dict[str, str]) -> list[Finished]:
    """``goggles run`` with K=2 and with K=3 into one output, started together; returns them in
    the order they finished."""
    running = {k: subprocess.Popen(
        [sys.executable, "-m", "goggles.cli", "run", source, "--output", output,
         "--num-classes", str(k), "--backbone", "mobilenet_v2", "--descriptor-backbone", "none",
         "--top-k", "2", "--device", "cpu", "--runner", "inprocess"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for k in (2, 3)}
    finished: list[Finished] = []
    deadline = time.monotonic() + 900
    while running and time.monotonic() < deadline:
        for k, process in list(running.items()):
            if process.poll() is not None:
                _, err = process.communicate(timeout=60)
                finished.append(Finished(k, process.pid, process.returncode, err))
                del running[k]
        time.sleep(0.05)
    assert not running, "a run did not finish"
    return finished


def check_one_consistent_run(finished: list[Finished],
                             read_bytes: Callable[[str], bytes]) -> None:
    """The run that finished first was refused at once (the other was still running); the
    output's labels, metrics and report are all the other run's."""
    loser, winner = finished
    k = winner.k
    assert loser.returncode != 0 and winner.returncode == 0, (loser.stderr, winner.stderr)
    err = loser.stderr.strip().splitlines()
    assert len(err) == 1 and "is locked by another goggles run" in err[0], loser.stderr
    assert "--break-lock" in err[0] and f"pid {winner.pid}" in err[0]
    labels = pq.read_table(io.BytesIO(read_bytes("labels.parquet")))
    metrics = json.loads(read_bytes("metrics.json"))
    report = read_bytes("report.html").decode()
    assert metrics["num_classes"] == k
    assert {len(p) for p in labels["probs"].to_pylist()} == {k}
    assert f"cluster_{k - 1}" in report and f"cluster_{k}<" not in report


def test_two_runs_into_one_local_output(tmp_path: Path) -> None:
    source = small_source(tmp_path / "in")
    out = tmp_path / "out"
    finished = race(str(source), str(out), dict(os.environ))
    check_one_consistent_run(finished, lambda name: (out / name).read_bytes())
    assert not (out / ".goggles.lock").exists()  # released by the run that held it
