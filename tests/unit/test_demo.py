"""The demo's data preparation: idx decoding and the ImageFolder it writes."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from goggles.demo import (
    CLASSES,
    IMAGES_FILE,
    LABELS_FILE,
    DemoError,
    locate_fashion_mnist,
    read_idx,
    write_image_folder,
)


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_read_idx_round_trips_images_and_labels() -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(read_idx(_idx(images)), images)
    labels = np.array([9, 0, 3], dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(_idx(labels)), labels)


@pytest.mark.parametrize("data, message", [(b"\x00\x00\x09\x01" + b"\x00" * 8, "magic"),
                                           (b"\x00\x00\x08\x01\x00\x00\x00\x05ab", "header")])
def test_read_idx_rejects_bad_files(data: bytes, message: str) -> None:
    with pytest.raises(DemoError, match=message):
        read_idx(data)


def test_write_image_folder_takes_the_first_images_of_each_class(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    labels = np.array([1, 8, 7, 1, 8, 7, 1, 8, 0, 1, 2, 7], dtype=np.uint8)
    idx = tmp_path / "idx"
    idx.mkdir()
    (idx / IMAGES_FILE).write_bytes(gzip.compress(_idx(images)))
    (idx / LABELS_FILE).write_bytes(gzip.compress(_idx(labels)))
    assert locate_fashion_mnist(str(tmp_path / "cache"), str(idx)) == str(idx)
    out = tmp_path / "images"
    counts = write_image_folder(str(idx), str(out), ["trouser", "bag"], per_class=3)
    assert counts == {"trouser": 3, "bag": 3}
    assert sorted(p.name for p in out.iterdir()) == ["bag", "trouser"]
    trousers = sorted((out / "trouser").iterdir())
    assert [p.name for p in trousers] == ["00000.png", "00001.png", "00002.png"]
    first = np.asarray(Image.open(trousers[1]))
    np.testing.assert_array_equal(first, images[3])  # the second image labelled trouser (1)
    assert CLASSES[1] == "trouser" and CLASSES[8] == "bag"


def test_unknown_classes_and_missing_files_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DemoError, match="lacks"):
        locate_fashion_mnist(str(tmp_path), str(tmp_path))
    with pytest.raises(DemoError, match="two or more of"):
        write_image_folder(str(tmp_path), str(tmp_path / "o"), ["trousers", "bag"], 5)
