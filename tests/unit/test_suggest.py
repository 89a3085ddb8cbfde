"""Which images to label next (goggles.inference.suggest, goggles suggest): typical images that
cover the data's modes, never an image labeled before, on data whose modes are known."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from goggles.cli import main
from goggles.inference.suggest import suggest_images, typical_images


def blobs(sizes: tuple[int, ...], dim: int = 8, spread: float = 0.05,
          seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit-length points around ``len(sizes)`` orthogonal centres: (x [N, dim], mode of each
    row, centres)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:len(sizes)]
    mode = np.repeat(np.arange(len(sizes)), sizes)
    x = centres[mode] + spread * rng.standard_normal((len(mode), dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), mode, centres


def test_one_typical_image_of_each_mode() -> None:
    x, mode, centres = blobs((40, 30, 20, 12))
    picks = typical_images(x, 4, seed=0)
    assert sorted(mode[picks].tolist()) == [0, 1, 2, 3]  # every mode, once
    for row in picks:  # the most typical: nearer its centre than most of its mode
        mine = np.flatnonzero(mode == mode[row])
        distance = np.linalg.norm(x[mine] - centres[mode[row]], axis=1)
        assert np.linalg.norm(x[row] - centres[mode[row]]) <= np.quantile(distance, 0.5)


def test_a_later_round_asks_for_the_modes_left_uncovered() -> None:
    x, mode, _ = blobs((30, 30, 30, 25, 25, 25))
    first = np.array([np.flatnonzero(mode == m)[3] for m in (0, 1, 2)])
    picks = typical_images(x, 3, labeled=first, seed=0)
    assert not set(picks) & set(first)
    assert sorted(mode[picks].tolist()) == [3, 4, 5]


def test_suggestions_skip_the_labeled_and_stay_in_range_on_a_sample() -> None:
    x, mode, _ = blobs((300, 300, 300), dim=6)
    affinity = x[:, :3]
    described = [x[:, 3:]]
    labeled = np.arange(0, 900, 7)
    picks = suggest_images(affinity, described, 9, labeled=labeled, seed=1, max_rows=200)
    assert len(picks) == 9 and len(set(picks.tolist())) == 9
    assert not set(picks.tolist()) & set(labeled.tolist())
    assert picks.min() >= 0 and picks.max() < 900
    again = suggest_images(affinity, described, 9, labeled=labeled, seed=1, max_rows=200)
    np.testing.assert_array_equal(picks, again)  # seeded: the same list for the same run


def test_no_more_than_the_unlabeled_images() -> None:
    x, _, _ = blobs((3, 3))
    assert len(typical_images(x, 10, labeled=[0, 1], seed=0)) == 4
    assert len(typical_images(x, 10, labeled=list(range(6)), seed=0)) == 0


@pytest.mark.slow
def test_goggles_suggest_writes_images_to_label_and_skips_earlier_rounds(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.unit.test_degenerate import _png

    source = tmp_path / "in"
    for index in range(12):
        folder = source / f"class_{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index}.png").write_bytes(_png(index))
    out = tmp_path / "out"
    assert main(["run", str(source), "--num-classes", "2", "--output", str(out), "--runner",
                 "inprocess", "--backbone", "mobilenet_v2", "--descriptor-backbone", "none",
                 "--top-k", "3", "--device", "cpu"]) == 0
    first = tmp_path / "round1.csv"
    assert main(["suggest", str(out), "--budget", "4", "--output", str(first)]) == 0
    with first.open() as handle:
        rows = list(csv.DictReader(handle))
    known = set(pq.read_table(out / "labels.parquet")["uri"].to_pylist())
    assert len(rows) == 4 and all(r["label"] == "" for r in rows)
    assert {r["uri"] for r in rows} <= known
    for r in rows:  # the person fills the label column in
        r["label"] = Path(r["uri"]).parent.name
    with first.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["uri", "label"])
        writer.writeheader()
        writer.writerows(rows)
    second = tmp_path / "round2.csv"
    assert main(["suggest", str(out), "--budget", "4", "--output", str(second),
                 "--dev-labels", str(first)]) == 0
    with second.open() as handle:
        again = {r["uri"] for r in csv.DictReader(handle)}
    assert len(again) == 4 and not again & {r["uri"] for r in rows}
    assert "4 labeled before" in capsys.readouterr().out
    assert main(["suggest", str(out), "--budget", "4", "--output", str(second)]) == 2  # kept
