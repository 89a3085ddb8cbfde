"""Hostile inputs through the ingest path (issue 8): every file, generated here, is either
accepted and converted to RGB or rejected with a specific reason; the listing terminates; the
manifest has one row per listed file.

The generators (``hostile_blobs``, ``make_hostile_tree``) live in ``tests/conftest.py``; the
whole-run test in ``tests/integration/test_hostile_run.py`` uses them too.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from goggles.ingest.config import IngestConfig
from goggles.ingest.manifest import build_manifest, inspect_file, printable
from goggles.io import listing, storage
from goggles.io.images import decode_image
from tests.conftest import (
    BLUE,
    RED,
    alarm_fixture,
    animated_gif,
    encode,
    exif_rotated_jpeg,
    hostile_blobs,
    make_hostile_tree,
    noise,
    transparent_palette_png,
)

alarm = alarm_fixture(60, "ingest hung on a hostile file")


# -- content ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(hostile_blobs()))
def test_hostile_content_is_accepted_as_rgb_or_rejected_with_its_reason(name: str) -> None:
    data, expect = hostile_blobs()[name]
    listed = listing.ListedFile(f"memory:///hostile/{name}", name, len(data))
    storage.write_bytes(listed.uri, data)
    record = inspect_file(listed, IngestConfig())
    if expect.status == "accepted":
        assert record.error is None, record.error
        assert (record.width, record.height) == expect.size
        assert decode_image(data, max_pixels=64_000_000).mode == "RGB"
    else:
        assert record.error, f"{name} was accepted"
        assert expect.reason in record.error
        assert record.width is None and record.height is None


def test_exif_orientation_turns_the_photo_upright() -> None:
    image = np.asarray(decode_image(exif_rotated_jpeg(), max_pixels=10_000))
    assert image.shape == (60, 40, 3)
    # orientation 6 means "rotate 90 degrees clockwise to view": the top-left block goes top-right
    assert image[3, -4].tolist() == pytest.approx(RED, abs=40)
    assert image[3, 3].tolist() == pytest.approx(BLUE, abs=40)


def test_cmyk_colours_are_converted_not_inverted() -> None:
    data = hostile_blobs()["cmyk.jpg"][0]
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    assert np.asarray(decode_image(data, max_pixels=10_000))[12, 16].tolist() == \
        pytest.approx(RED, abs=40)


def test_palette_transparency_becomes_white_and_gif_gives_its_first_frame() -> None:
    image = np.asarray(decode_image(transparent_palette_png(), max_pixels=10_000))
    assert image[4, 1].tolist() == list(RED) and image[4, 6].tolist() == [255, 255, 255]
    gif = np.asarray(decode_image(animated_gif(), max_pixels=10_000))
    assert gif[5, 5].tolist() == list(RED)


def test_sixteen_bit_png_keeps_its_full_range() -> None:
    image = np.asarray(decode_image(hostile_blobs()["sixteen_bit.png"][0], max_pixels=10_000))
    assert image.min() == 0 and image.max() == 255


def test_postscript_named_jpg_never_reaches_ghostscript() -> None:
    from goggles.io.images import ImageRejected

    with pytest.raises(ImageRejected, match="no supported image format") as caught:
        decode_image(hostile_blobs()["postscript.jpg"][0], max_pixels=10_000)
    assert "Ghostscript" not in str(caught.value)


# -- the filesystem ------------------------------------------------------------------------------

@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and symlinks need a POSIX system")
def test_hostile_tree_every_listed_file_gets_its_row(tmp_path: Path, alarm: None) -> None:
    source = tmp_path / "source"
    expected = make_hostile_tree(source)
    manifest = build_manifest(str(source), IngestConfig())
    listed = listing.list_files(str(source), IngestConfig().extensions)
    assert manifest.num_rows == len(listed)

    rows: dict[str, dict[str, object]] = {}
    for row in manifest.to_pylist():
        uri = str(row["uri"])
        assert uri.startswith(str(source) + "/"), f"{uri} is outside the source"
        rows[os.path.relpath(uri, source)] = row
    for relative, expect in expected.items():
        row = rows.pop(printable(relative))
        assert row["status"] == expect.status, (relative, row["error"])
        if expect.status == "accepted":
            assert (row["width"], row["height"]) == expect.size, relative
            assert row["error"] is None and row["sha256"]
        else:
            assert expect.reason in str(row["error"]), (relative, row["error"])
            assert row["image_id"] is None
        assert row["label"] == relative.split("/")[0]
    assert not rows, f"unexpected rows (through the folder symlink loop?): {sorted(rows)}"

    ids = sorted(r["image_id"] for r in manifest.to_pylist() if r["image_id"] is not None)
    assert ids == list(range(len(ids)))
    duplicates = [r["sha256"] for r in manifest.to_pylist()
                  if str(r["uri"]).endswith(("duplicate_1.png", "duplicate_2.png"))]
    assert len(duplicates) == 2 and duplicates[0] == duplicates[1]
    assert not (tmp_path / "pwned").exists() and not (source / "class_b" / "pwned").exists()


def test_file_that_vanishes_between_listing_and_reading(tmp_path: Path) -> None:
    for name in ("stays.png", "goes.png"):
        (tmp_path / name).write_bytes(encode(noise(8, 8), "PNG"))
    listed = listing.list_files(str(tmp_path), (".png",))
    (tmp_path / "goes.png").unlink()
    records = {Path(f.uri).name: inspect_file(f, IngestConfig()) for f in listed}
    assert records["stays.png"].error is None
    assert records["goes.png"].error is not None and "vanished" in records["goes.png"].error


def test_remote_object_that_vanishes_after_listing() -> None:
    uri = "memory:///vanishing/a/gone.png"
    storage.write_bytes(uri, encode(noise(8, 8), "PNG"))
    [listed] = listing.list_files("memory:///vanishing", (".png",))
    storage.filesystem(uri)[0].rm("/vanishing/a/gone.png")
    record = inspect_file(listed, IngestConfig())
    assert record.error is not None and "unreadable" in record.error
    assert "vanished after listing" in record.error
