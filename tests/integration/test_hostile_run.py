"""A whole run over real cub-dev birds mixed with hostile files (issue 2, acceptance item 4, and
issue 8): it completes, bad files are rejected with their reasons, grayscale and CMYK photos are
accepted, and the manifest, labels and metrics account for every listed file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from goggles.ingest.config import IngestConfig
from goggles.ingest.manifest import printable
from goggles.io import listing
from goggles.parameters import RunParameters
from goggles.pipeline.inprocess import run_inprocess
from tests.conftest import alarm_fixture, cub_task, encode, make_hostile_tree

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.data]


alarm = alarm_fixture(600, "the run hung on a hostile file")


def test_real_birds_mixed_with_hostile_files_run_to_completion(tmp_path: Path,
                                                               alarm: None) -> None:
    source = cub_task(tmp_path, "001", "014", limit=6)
    first, second = sorted(p.name for p in source.iterdir())
    birds = sorted(p.relative_to(source).as_posix() for p in source.rglob("*.jpg"))
    assert len(birds) == 12
    real = sorted(p for p in (source / first).iterdir())
    bird = Image.open(real[0]).convert("RGB")

    # issue 2, acceptance item 4: made from a real photo where it makes sense
    issue2 = {
        f"{first}/truncated_bird.jpg": (real[1].read_bytes()[:5000], "truncated image"),
        f"{first}/empty.jpg": (b"", "empty file (0 bytes)"),
        f"{second}/notes.jpg": (b"field notes: two albatrosses at dawn\n", "not an image"),
        f"{first}/grayscale_bird.png": (encode(bird.convert("L"), "PNG"), None),
        f"{first}/cmyk_bird.jpg": (encode(bird.convert("CMYK"), "JPEG", quality=92), None),
    }
    for relative, (data, _) in issue2.items():
        (source / relative).write_bytes(data)
    # issue 8: every hostile file and filesystem oddity, in the same class folders
    hostile = make_hostile_tree(source, classes=(first, second))

    out = tmp_path / "out"
    metrics = run_inprocess(RunParameters(source_uri=str(source), output_uri=str(out),
                                          num_classes=2, backbone="mobilenet_v2", top_k=3,
                                          device="cpu", seed=0, follow_symlinks=True))

    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    listed = listing.list_files(str(source), IngestConfig().extensions)
    assert len(manifest) == len(listed)  # one row per listed file
    rows = {printable(str(r["uri"]))[len(str(source)) + 1:]: r for r in manifest}

    for relative, (_, reason) in issue2.items():
        row = rows[relative]
        if reason is None:
            assert row["status"] == "accepted", (relative, row["error"])
            assert (row["width"], row["height"]) == bird.size
        else:
            assert row["status"] == "rejected" and reason in str(row["error"]), row
    for relative, expect in hostile.items():
        row = rows[printable(relative)]
        assert row["status"] == expect.status, (relative, row["error"])
        if expect.status == "rejected":
            assert expect.reason in str(row["error"]), (relative, row["error"])
    for relative in birds:
        assert rows[relative]["status"] == "accepted", (relative, rows[relative]["error"])

    n_accepted = sum(r["status"] == "accepted" for r in manifest)
    n_rejected = len(manifest) - n_accepted
    expected_rejected = sum(1 for _, reason in issue2.values() if reason) + \
        sum(1 for e in hostile.values() if e.status == "rejected")
    assert n_rejected == expected_rejected
    assert metrics["n_images"] == n_accepted and metrics["n_rejected"] == n_rejected
    assert json.loads((out / "metrics.json").read_text())["n_rejected"] == n_rejected

    labels = pq.read_table(out / "labels.parquet")
    assert labels.num_rows == n_accepted
    assert sorted(labels["image_id"].to_pylist()) == list(range(n_accepted))
    probs = np.array(labels["probs"].to_pylist())
    assert probs.shape == (n_accepted, 2) and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    accepted_uris = {r["uri"] for r in manifest if r["status"] == "accepted"}
    assert set(labels["uri"].to_pylist()) == accepted_uris
    assert (out / "report.html").stat().st_size > 0
