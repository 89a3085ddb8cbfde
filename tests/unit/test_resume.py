"""Crash-resume records (goggles.resume) and what a rerun into the same output reuses: a stage is
reused only when its key — its parameters and the keys of its inputs — is unchanged."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from goggles.io import storage
from goggles.io.resume import StageRecords, stage_key
from goggles.parameters import RunParameters
from goggles.pipeline.inprocess import run_inprocess


def test_stage_key_depends_on_every_part_and_not_on_dict_order() -> None:
    base = stage_key("infer", ["a", "b"], {"num_classes": 2, "method": "em"}, "")
    assert base == stage_key("infer", ["a", "b"], {"method": "em", "num_classes": 2}, "")
    assert len(base) == 64 and int(base, 16) >= 0  # a sha256 hex digest
    changed = [stage_key("extract", ["a", "b"], {"num_classes": 2, "method": "em"}, ""),
               stage_key("infer", ["a", "c"], {"num_classes": 2, "method": "em"}, ""),
               stage_key("infer", ["b", "a"], {"num_classes": 2, "method": "em"}, ""),
               stage_key("infer", ["a", "b"], {"num_classes": 3, "method": "em"}, ""),
               stage_key("infer", ["a", "b"], {"num_classes": 2, "method": "kmeans"}, ""),
               stage_key("infer", ["a", "b"], {"num_classes": 2, "method": "em"}, "dev.csv"),
               stage_key("infer", ["a", "b"], {"num_classes": 2, "method": "em"})]
    assert len({base, *changed}) == len(changed) + 1


def test_records_reuse_only_a_finished_stage_with_the_same_key(tmp_path: Path) -> None:
    records = StageRecords(str(tmp_path / "artifacts"))
    calls: list[str] = []

    def work(value: int) -> Any:
        def run() -> dict[str, Any]:
            calls.append(f"run {value}")
            return {"value": value}
        return run

    assert records.finished("infer", "k1") is None  # never ran
    assert records.run("infer", "k1", work(1)) == {"value": 1}
    assert records.finished("infer", "k1") == {"value": 1}
    assert records.run("infer", "k1", work(2)) == {"value": 1}  # reused, not run
    assert calls == ["run 1"]
    assert records.finished("infer", "k2") is None  # another key: not finished
    assert records.run("infer", "k2", work(3)) == {"value": 3}
    assert calls == ["run 1", "run 3"]
    assert records.finished("infer", "k1") is None  # the record now holds k2
    assert records.finished("extract", "k2") is None  # records are per stage
    assert sorted(p.name for p in (tmp_path / "artifacts" / "_stages").iterdir()) == \
        ["infer.json"]


def test_a_stage_that_fails_leaves_no_record(tmp_path: Path) -> None:
    records = StageRecords(str(tmp_path))

    def broken() -> dict[str, Any]:
        raise RuntimeError("killed half-way")

    with pytest.raises(RuntimeError, match="killed half-way"):
        records.run("extract", "k", broken)
    assert records.finished("extract", "k") is None
    assert not (tmp_path / "_stages" / "extract.json").exists()
    assert records.run("extract", "k", lambda: {"done": True}) == {"done": True}


def test_an_unreadable_record_is_not_trusted(tmp_path: Path) -> None:
    records = StageRecords(str(tmp_path))
    storage.write_bytes(str(tmp_path / "_stages" / "ingest.json"), b"{half a rec")
    assert records.finished("ingest", "k") is None
    storage.write_json({"key": "k"}, str(tmp_path / "_stages" / "ingest.json"))
    assert records.finished("ingest", "k") == {}


# -- a rerun of the whole pipeline into the same output ---------------------------------------

def _blocky_png(seed: int, colour: tuple[int, int, int]) -> bytes:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 80, (6, 6, 3)) + np.array(colour)  # blocky, so the CNN sees structure
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8)).resize(
        (64, 64), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_rerun_with_another_num_classes_or_method_redoes_inference(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A second run into the same output with another K (then another method) must reuse
    ingest, extraction and affinity but give labels of the new K: a resume key that left out
    the inference parameters would hand back the first run's labels."""
    source = tmp_path / "in"
    for index in range(9):
        klass = ("red", "green", "blue")[index % 3]
        (source / klass).mkdir(parents=True, exist_ok=True)
        colour = {"red": (170, 0, 0), "green": (0, 170, 0), "blue": (0, 0, 170)}[klass]
        (source / klass / f"{index}.png").write_bytes(_blocky_png(index, colour))
    out = tmp_path / "out"

    def run(num_classes: int, method: str) -> tuple[dict[str, Any], np.ndarray, str]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="goggles.io.resume"):
            metrics = run_inprocess(RunParameters(
                source_uri=str(source), output_uri=str(out), num_classes=num_classes,
                method=method, backbone="mobilenet_v2", top_k=2, device="cpu", seed=0))
        probs = np.array(pq.read_table(out / "labels.parquet")["probs"].to_pylist())
        return metrics, probs, caplog.text

    metrics, probs, _ = run(2, "em")
    assert probs.shape == (9, 2) and metrics["num_classes"] == 2 and metrics["method"] == "em"

    metrics, probs, log = run(3, "em")
    assert probs.shape == (9, 3), "the rerun with num_classes=3 returned the first run's labels"
    assert metrics["num_classes"] == 3 and len(metrics["cluster_to_class"]) == 3
    assert "reusing extract" in log and "reusing affinity-00000-of-00001" in log, log
    assert "running infer" in log, log
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)

    metrics, probs, log = run(3, "kmeans")
    assert metrics["method"] == "kmeans"
    assert "running infer" in log, log
    assert storage.read_json(str(out / "artifacts" / "inference.json"))["method"] == "kmeans"
    assert probs.shape == (9, 3)

    _, _, log = run(3, "kmeans")  # nothing changed: everything is reused
    assert "reusing infer" in log and "running infer" not in log, log


# -- what a rerun trusts about the source --------------------------------------------------------

def _bmp(seed: int, colour: tuple[int, int, int]) -> bytes:
    """A 64x64 BMP: every picture of this size has the same number of bytes."""
    image = Image.open(io.BytesIO(_blocky_png(seed, colour))).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "BMP")
    return buffer.getvalue()


def rewrite_keeping_size_and_mtime(path: Path, data: bytes) -> None:
    """What ``cp -p``, ``rsync -t`` or ``tar`` leave: new bytes, the same size, the old mtime."""
    before = path.stat()
    assert len(data) == before.st_size
    path.write_bytes(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_mtime_ns == before.st_mtime_ns


def bmp_source(root: Path, n: int = 6) -> Path:
    for index in range(n):
        klass = ("red", "blue")[index % 2]
        (root / klass).mkdir(parents=True, exist_ok=True)
        colour = {"red": (170, 0, 0), "blue": (0, 0, 170)}[klass]
        (root / klass / f"{index}.bmp").write_bytes(_bmp(index, colour))
    return root


@pytest.mark.slow
def test_a_same_size_same_mtime_rewrite_is_ingested_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file rewritten with another picture of the same size whose mtime is set back must not
    be answered from the last run: its ctime moved, so it is re-hashed and its content decides.
    A touch (new mtime, same bytes) is re-hashed too, and reuses everything."""
    import hashlib

    source = bmp_source(tmp_path / "in")
    out = tmp_path / "out"

    def run() -> tuple[str, dict[str, str]]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="goggles"):
            run_inprocess(RunParameters(source_uri=str(source), output_uri=str(out),
                                        num_classes=2, method="kmeans",
                                        backbone="mobilenet_v2", descriptor_backbone="none",
                                        top_k=2, device="cpu", seed=0))
        manifest = pq.read_table(out / "manifest.parquet").to_pylist()
        return caplog.text, {row["uri"]: row["sha256"] for row in manifest}

    run()
    victim = source / "red" / "0.bmp"
    rewrite_keeping_size_and_mtime(victim, _bmp(7, (0, 170, 0)))
    log, hashes = run()
    assert "redoing ingest: red/0.bmp has new content" in log, log
    assert "running extract" in log and "reusing extract" not in log, log
    assert hashes[str(victim)] == hashlib.sha256(victim.read_bytes()).hexdigest()
    os.utime(victim)  # touched: new mtime, same bytes
    log, _ = run()
    assert "reusing ingest" in log and "reusing extract" in log and "reusing infer" in log, log
