"""A rerun into the same output is keyed by content: editing dev labels, weights or an image in
place redoes exactly the stages they feed and gives the labels a fresh run gives; a deleted
output is redone; nothing else is."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from goggles.parameters import RunParameters
from goggles.pipeline.inprocess import run_inprocess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STAGES = ("ingest", "extract", "affinity-00000-of-00001", "infer")


def _image(path: Path, seed: int, colour: tuple[int, int, int]) -> None:
    """A blocky 48x48 PPM: the format has a fixed size, so a rewrite keeps the file's size."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 80, (6, 6, 3)) + np.array(colour)
    Image.fromarray(base.clip(0, 255).astype(np.uint8)).resize(
        (48, 48), Image.Resampling.NEAREST).save(path, "PPM")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    for index in range(9):
        kind = ("red", "green", "blue")[index % 3]
        (folder / kind).mkdir(parents=True, exist_ok=True)
        colour = {"red": (170, 0, 0), "green": (0, 170, 0), "blue": (0, 0, 170)}[kind]
        _image(folder / kind / f"{index}.ppm", index, colour)
    return folder


def _run(source: Path, out: Path, caplog: pytest.LogCaptureFixture,
         **overrides: Any) -> tuple[dict[str, str], bytes]:
    """Run into ``out``; returns (stage -> "running"/"reusing", labels.parquet's bytes)."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="goggles.io.resume"):
        run_inprocess(RunParameters(source_uri=str(source), output_uri=str(out), num_classes=3,
                                    backbone="mobilenet_v2", descriptor_backbone="none",
                                    top_k=2, device="cpu", **overrides))
    what = {stage: verb for verb, stage in re.findall(r"(running|reusing) (\S+)", caplog.text)}
    assert set(what) == set(STAGES), caplog.text
    return what, (out / "labels.parquet").read_bytes()


def test_edited_dev_labels_redo_inference_only(source: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    dev = tmp_path / "dev.csv"
    dev.write_text(f"uri,label\n{source}/red/0.ppm,rot\n{source}/green/1.ppm,grün\n")
    out = tmp_path / "out"
    _run(source, out, caplog, dev_labels_uri=str(dev))
    dev.write_text(f"uri,label\n{source}/red/0.ppm,rouge\n{source}/green/1.ppm,vert\n")
    stages, labels = _run(source, out, caplog, dev_labels_uri=str(dev))
    assert stages == {"ingest": "reusing", "extract": "reusing",
                      "affinity-00000-of-00001": "reusing", "infer": "running"}
    _, fresh = _run(source, tmp_path / "fresh", caplog, dev_labels_uri=str(dev))
    assert labels == fresh and b"rouge" in labels and b"rot" not in labels


def test_an_image_rewritten_at_the_same_size_redoes_everything_it_feeds(
        source: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "out"
    _run(source, out, caplog)
    image = source / "blue" / "2.ppm"
    size, mtime = image.stat().st_size, image.stat().st_mtime_ns
    _image(image, 99, (170, 170, 0))  # new pixels, same size
    os.utime(image, ns=(mtime + 10**9, mtime + 10**9))
    assert image.stat().st_size == size
    stages, labels = _run(source, out, caplog)
    assert set(stages.values()) == {"running"}, stages
    _, fresh = _run(source, tmp_path / "fresh", caplog)
    assert labels == fresh


def test_weights_edited_in_place_redo_extraction_and_what_follows(
        source: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from safetensors.torch import save_file

    from goggles.features.backbones import resolve_weights

    state, _ = resolve_weights("mobilenet_v2")
    weights = tmp_path / "mobilenet_v2.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    out = tmp_path / "out"
    _run(source, out, caplog, weights_uri=str(weights))
    first = "features.0.0.weight"
    state[first] = state[first] * 1.5
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    stages, labels = _run(source, out, caplog, weights_uri=str(weights))
    assert stages == {"ingest": "reusing", "extract": "running",
                      "affinity-00000-of-00001": "running", "infer": "running"}
    _, fresh = _run(source, tmp_path / "fresh", caplog, weights_uri=str(weights))
    assert labels == fresh


def test_a_deleted_output_redoes_its_stage(source: Path, tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "out"
    _, before = _run(source, out, caplog)
    (out / "labels.parquet").unlink()
    stages, labels = _run(source, out, caplog)
    assert stages == {"ingest": "reusing", "extract": "reusing",
                      "affinity-00000-of-00001": "reusing", "infer": "running"}
    assert "its output" in caplog.text and "labels.parquet is missing" in caplog.text
    assert labels == before
    (out / "artifacts" / "affinity" / "shard-00000" / "affinity.npy").unlink()
    stages, _ = _run(source, out, caplog)
    assert stages == {"ingest": "reusing", "extract": "reusing",
                      "affinity-00000-of-00001": "running", "infer": "reusing"}
