"""Hostile inputs through the ingest path (issue 8): every file, generated here, is either
accepted and converted to RGB or rejected with a specific reason; the listing terminates; the
manifest has one row per listed file.

The generators (``hostile_blobs``, ``make_hostile_tree``) are reused by the whole-run test in
``tests/integration/test_hostile_run.py``.
"""

from __future__ import annotations

import io
import os
import signal
import struct
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from goggles.ingest.config import IngestConfig
from goggles.ingest.manifest import build_manifest, inspect_file, printable
from goggles.io import listing, storage
from goggles.io.images import decode_image

RED, BLUE = (255, 0, 0), (0, 0, 255)


@dataclass(frozen=True)
class Expect:
    """What ingest must make of a file: ``status`` and a substring of ``error`` (rejections)
    or the decoded ``size`` (acceptances)."""

    status: str
    reason: str = ""
    size: tuple[int, int] | None = None


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_claiming(width: int, height: int) -> bytes:
    """A small, valid-looking PNG whose IHDR claims ``width`` x ``height`` RGB pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def tiff_claiming_rows(rows: int) -> bytes:
    """A 6x5 float TIFF (one strip) whose ImageLength tag is rewritten to ``rows``: a few hundred
    bytes declaring millions of pixels (found by the fuzz test; Pillow fills the rest with 0)."""
    data = bytearray(encode(Image.fromarray(np.ones((5, 6), np.float32)), "TIFF"))
    assert data[:4] == b"II*\x00"
    ifd = struct.unpack_from("<I", data, 4)[0]
    for entry in range(struct.unpack_from("<H", data, ifd)[0]):
        at = ifd + 2 + 12 * entry
        if struct.unpack_from("<H", data, at)[0] == 257:  # ImageLength
            struct.pack_into("<HHII", data, at, 257, 4, 1, rows)  # LONG, count 1
            return bytes(data)
    raise AssertionError("no ImageLength tag")


def corner_marked(width: int = 60, height: int = 40) -> Image.Image:
    """Blue, with a red 10x10 block in the top-left corner (to follow rotations)."""
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, 10, 10))
    return image


def exif_rotated_jpeg() -> bytes:
    """A 60x40 JPEG with EXIF Orientation=6: shown upright it is 40x60, red block top-right."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(corner_marked(), "JPEG", quality=95, exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (16, 12), colour) for colour in (RED, BLUE, (0, 255, 0))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def transparent_palette_png() -> bytes:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, 4, 8))  # left half red, right half index 0 (transparent)
    return encode(image, "PNG", transparency=0)


def hostile_blobs() -> dict[str, tuple[bytes, Expect]]:
    """File name -> (bytes, expectation) for every hostile content the tests generate."""
    jpeg = encode(noise(64, 48), "JPEG", quality=90)
    eps = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"
           b"(pwned) print flush showpage\n%%EOF\n")
    return {
        "truncated.jpg": (jpeg[: len(jpeg) // 2], Expect("rejected", "truncated image")),
        "empty.jpg": (b"", Expect("rejected", "empty file (0 bytes)")),
        "random.jpg": (np.random.default_rng(1).bytes(4096), Expect("rejected", "not an image")),
        "random.png": (np.random.default_rng(2).bytes(300), Expect("rejected", "not an image")),
        "page.jpg": (b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>",
                     Expect("rejected", "not an image")),
        "text.jpg": (b"just some text, named like a photo\n", Expect("rejected", "not an image")),
        "postscript.jpg": (eps, Expect("rejected", "not an image")),
        "png_then_garbage.png": (b"\x89PNG\r\n\x1a\n" + np.random.default_rng(3).bytes(200),
                                 Expect("rejected", "")),
        "bomb_40000x40000.png": (png_claiming(40_000, 40_000),
                                 Expect("rejected", "decompression bomb")),
        "over_max_pixels.png": (png_claiming(10_000, 7_000),
                                Expect("rejected", "exceeds max_pixels=64000000")),
        "tiff_claiming_rows.tif": (tiff_claiming_rows(8_912_901),
                                   Expect("rejected", "covers 30 of the 6x8912901 pixels")),
        "one_pixel.png": (encode(Image.new("RGB", (1, 1), RED), "PNG"),
                          Expect("accepted", size=(1, 1))),
        "one_pixel.jpg": (encode(Image.new("L", (1, 1), 128), "JPEG"),
                          Expect("accepted", size=(1, 1))),
        "cmyk.jpg": (encode(Image.new("RGB", (32, 24), RED).convert("CMYK"), "JPEG", quality=95),
                     Expect("accepted", size=(32, 24))),
        "grayscale.png": (encode(noise(30, 20).convert("L"), "PNG"),
                          Expect("accepted", size=(30, 20))),
        "sixteen_bit.png": (encode(Image.fromarray(
            np.linspace(0, 65535, 30 * 20).reshape(20, 30).astype(np.uint16)), "PNG"),
            Expect("accepted", size=(30, 20))),
        "palette.png": (encode(noise(30, 20).convert("P"), "PNG"),
                        Expect("accepted", size=(30, 20))),
        "palette_transparent.png": (transparent_palette_png(), Expect("accepted", size=(8, 8))),
        "rgba.png": (encode(noise(30, 20).convert("RGBA"), "PNG"),
                     Expect("accepted", size=(30, 20))),
        "animated.gif": (animated_gif(), Expect("accepted", size=(16, 12))),
        "exif_rotated.jpg": (exif_rotated_jpeg(), Expect("accepted", size=(40, 60))),
        "float_nan.tif": (encode(Image.fromarray(
            np.array([[np.nan, 0.0], [np.inf, 1.0]], np.float32)), "TIFF"),
            Expect("accepted", size=(2, 2))),
    }


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

NON_UTF8 = b"caf\xe9-\xff.png"
SHELL_NAME = "with space $(touch pwned) ; & | `touch pwned2` 'q' \"dq\" * ? [x] #.png"
LONG_NAME = "l" * 251 + ".png"  # 255 bytes, the usual file-name limit


def make_hostile_tree(root: Path, *, classes: tuple[str, str] = ("class_a", "class_b"),
                      ) -> dict[str, Expect]:
    """Write every hostile file and filesystem oddity under ``root/<class>/`` and return
    relative path -> expectation for each file ingest lists (folder names as labels)."""
    first, second = classes
    expected: dict[str, Expect] = {}
    for index, (name, (data, expect)) in enumerate(sorted(hostile_blobs().items())):
        relative = f"{(first, second)[index % 2]}/{name}"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
        expected[relative] = expect

    good = encode(noise(48, 32, seed=7), "PNG")
    for relative in (f"{first}/duplicate_1.png", f"{first}/duplicate_2.png",
                     f"{second}/{LONG_NAME}", f"{second}/{SHELL_NAME}",
                     f"{first}/nested/deeper/still.png"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(good)
        expected[relative] = Expect("accepted", size=(48, 32))
    (root / second / "a::b.png").write_bytes(good)
    expected[f"{second}/a::b.png"] = Expect("rejected", "URL-chaining")
    os.makedirs(os.fsencode(root / second), exist_ok=True)
    with open(os.path.join(os.fsencode(root / second), NON_UTF8), "wb") as handle:
        handle.write(good)
    expected[f"{second}/" + NON_UTF8.decode("utf-8", "surrogateescape")] = \
        Expect("rejected", "not valid UTF-8")

    (root / first / "loop").symlink_to(root, target_is_directory=True)  # a folder loop
    (root / first / "self_loop.jpg").symlink_to(root / first / "self_loop.jpg")
    expected[f"{first}/self_loop.jpg"] = Expect("rejected", "symlink loop")
    (root / first / "dangling.jpg").symlink_to(root / "does-not-exist.jpg")
    expected[f"{first}/dangling.jpg"] = Expect("rejected", "vanished")
    os.mkfifo(root / second / "fifo.jpg")
    expected[f"{second}/fifo.jpg"] = Expect("rejected", "not a regular file")
    if os.path.exists("/dev/zero"):
        (root / second / "endless.jpg").symlink_to("/dev/zero")
        expected[f"{second}/endless.jpg"] = Expect("rejected", "not a regular file")
    (root / second / "folder.jpg").mkdir()  # a folder with an image suffix is not a file
    (root / second / "folder.jpg" / "inside.png").write_bytes(good)
    expected[f"{second}/folder.jpg/inside.png"] = Expect("accepted", size=(48, 32))
    (root / first / "notes.txt").write_text("not listed: no image suffix")
    return expected


@pytest.fixture
def alarm() -> Iterator[None]:
    """Fail instead of hanging (a FIFO or an endless device read would block forever)."""
    def hung(signum: int, frame: object) -> None:
        raise TimeoutError("ingest hung on a hostile file")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


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
