"""What ``goggles run`` with the default (kfp local) runner says, and what a rerun into the same
output redoes.

Not a terminal (the output is piped): a line as each stage starts and ends, a few progress lines
at most, three closing lines, no colour codes, no kfp executor output; ``-v`` shows the runner's
output again. An identical rerun reuses every stage (``features_reused`` is the image count); a
rerun with new dev labels redoes inference (and what follows it) only, and ``--train`` after
that trains without extracting again. Twelve small synthetic
images keep it short; the same holds for 80 bird photos (README, measured by hand).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.integration]

STAGES = ("ingest", "extract", "affinity", "infer", "evaluate")


def _images(root: Path, per_class: int = 6) -> Path:
    """Two classes told apart by colour: reddish and bluish noise, 48 pixels square."""
    rng = np.random.default_rng(0)
    for name, channel in (("red", 0), ("blue", 2)):
        folder = root / name
        folder.mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 80, (48, 48, 3), dtype=np.uint8)
            pixels[..., channel] = rng.integers(170, 256, (48, 48), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}-{index}.png")
    return root


def _goggles(*arguments: str) -> subprocess.CompletedProcess[str]:
    """``goggles ARGUMENTS`` in a subprocess, its output piped (not a terminal)."""
    return subprocess.run([sys.executable, "-m", "goggles.cli", *arguments],
                          capture_output=True, text=True, timeout=900, check=False)


def _run(source: Path, out: Path, *extra: str,
         verbose: bool = False) -> subprocess.CompletedProcess[str]:
    done = _goggles(*(["-v"] if verbose else []), "run", str(source), "--num-classes", "2",
                    "--output", str(out), "--backbone", "mobilenet_v2", *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("console")
    source = _images(tmp / "images")
    out = tmp / "out"
    return {"tmp": tmp, "source": source, "out": out, "done": _run(source, out)}


def _stage_line(lines: list[str], stage: str) -> str:
    found = [line for line in lines if line.split(" ", 1)[0] == stage and " started" not in line]
    assert len(found) == 1, (stage, lines)
    return found[0]


def test_the_default_run_prints_a_line_per_stage_and_no_runner_output(first: dict) -> None:
    done = first["done"]
    lines = (done.stderr + done.stdout).splitlines()
    assert len(lines) <= 25, "\n".join(lines)
    for stage in STAGES:
        assert _stage_line(lines, stage).split(None, 1)[1].startswith("done in "), lines
        assert f"{stage.ljust(9)} started" in lines
    assert "12 images accepted, 0 rejected" in _stage_line(lines, "ingest")
    assert "features of 12 images computed, 0 reused" in _stage_line(lines, "extract")
    assert "\x1b[" not in done.stderr + done.stdout  # no colour codes off a terminal
    assert "Executing task" not in done.stderr and "executor" not in done.stderr.lower()
    assert "Warning" not in done.stderr
    closing = done.stdout.strip().splitlines()
    assert len(closing) == 3 and closing[0].startswith("accuracy ")
    assert closing[1] == f"labels: {first['out']}/labels.parquet   report: {first['out']}" \
                         "/report.html"
    assert closing[2].startswith(f"next: open the report, then goggles export {first['out']}")


def test_verbose_shows_the_runners_output_without_colour(first: dict) -> None:
    done = _run(first["source"], first["tmp"] / "verbose", verbose=True)
    assert "Executing task 'extract-part'" in done.stderr
    assert "Streamed logs" in done.stderr and len(done.stderr.splitlines()) > 100
    assert "\x1b[" not in done.stderr


def test_reruns_reuse_what_did_not_change(first: dict) -> None:
    """An identical rerun reuses every stage; new dev labels redo inference only."""
    out = first["out"]
    again = _run(first["source"], out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["features_computed"], metrics["features_reused"]) == (0, 12)
    lines = again.stderr.splitlines()
    for stage in ("ingest", "extract", "affinity", "infer"):
        assert "reused from the earlier run" in _stage_line(lines, stage)
    dev = first["tmp"] / "dev.csv"
    dev.write_text("uri,label\n" + "".join(
        f"{first['source'] / name / f'{name}-{i}.png'},{name}_given\n"
        for name in ("red", "blue") for i in range(2)))
    named = _run(first["source"], out, "--dev-labels", str(dev))
    lines = named.stderr.splitlines()
    for stage in ("ingest", "extract", "affinity"):
        assert "reused from the earlier run" in _stage_line(lines, stage)
    assert _stage_line(lines, "infer").split(None, 1)[1].startswith("done in ")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["features_computed"] == 0 and metrics["dev_set"]["n_images"] == 4
    assert metrics["dev_set"]["names_matched"] == "best mapping"
    assert "--names" not in named.stdout  # the dev labels named the clusters already
    trained = _run(first["source"], out, "--dev-labels", str(dev), "--train")
    lines = trained.stderr.splitlines()
    for stage in ("ingest", "extract", "affinity", "infer"):
        assert "reused from the earlier run" in _stage_line(lines, stage)
    assert _stage_line(lines, "train").split(None, 1)[1].startswith("done in ")
    assert (out / "model" / "model.json").is_file()
