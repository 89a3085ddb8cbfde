"""Property-based fuzzing of the ingest path (issue 8): thousands of generated files, mostly
valid images of every supported format mutated (truncated, bytes flipped or inserted, headers
spliced onto other bodies, dimensions rewritten) plus random bytes and hostile names, go through
``decode_image``, ``inspect_file`` and ``build_manifest``. None may crash, hang or slip through
unconverted: each file is accepted as RGB or rejected with a reason, and the manifest has one
row per file.
"""

from __future__ import annotations

import io
import os
import struct
import time
import uuid
from pathlib import Path

import fsspec
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from goggles.ingest.config import IngestConfig
from goggles.ingest.manifest import build_manifest
from goggles.io import storage
from goggles.io.images import ImageRejected, decode_image
from tests.conftest import alarm_fixture

CONFIG = IngestConfig()
# Whole-example time allowed; a file that takes longer counts as a hang.
SLOW_FILE_S = 10.0


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _seeds() -> list[bytes]:
    """Small valid images in every supported format and many modes."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 17, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 8
    sixteen = Image.fromarray(rng.integers(0, 65535, (9, 11), dtype=np.uint16))
    frames = [rgb, rgb.rotate(90), rgb.convert("L").convert("RGB")]
    return [
        _encode(rgb, "PNG"), _encode(rgb.convert("L"), "PNG"), _encode(rgb.convert("P"), "PNG"),
        _encode(rgb.convert("RGBA"), "PNG"), _encode(sixteen, "PNG"),
        _encode(rgb.convert("P"), "PNG", transparency=3),
        _encode(rgb, "JPEG"), _encode(rgb, "JPEG", progressive=True),
        _encode(rgb.convert("L"), "JPEG"), _encode(rgb.convert("CMYK"), "JPEG"),
        _encode(rgb, "JPEG", exif=exif.tobytes()),
        _encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        _encode(rgb, "BMP"), _encode(rgb.convert("P"), "BMP"),
        _encode(rgb, "WEBP"), _encode(rgb, "WEBP", lossless=True),
        _encode(rgb, "TIFF"), _encode(rgb, "TIFF", compression="tiff_deflate"),
        _encode(rgb, "TIFF", compression="tiff_lzw"),
        _encode(Image.fromarray(rng.normal(size=(5, 6)).astype(np.float32)), "TIFF"),
        _encode(rgb, "PPM"), _encode(rgb.convert("L"), "PPM"),
    ]


SEEDS = _seeds()


@st.composite
def hostile_bytes(draw: st.DrawFn) -> bytes:
    """One generated file: a mutated seed image, or random bytes."""
    kind = draw(st.sampled_from(
        ["seed", "truncate", "flip", "insert", "splice", "random", "header", "dims"]))
    seed: bytes = draw(st.sampled_from(SEEDS))
    if kind == "seed":
        return seed
    if kind == "random":
        return draw(st.binary(max_size=512))
    if kind == "truncate":
        return seed[: draw(st.integers(0, len(seed) - 1))]
    if kind == "flip":
        data = bytearray(seed)
        for _ in range(draw(st.integers(1, 8))):
            position = draw(st.integers(0, len(data) - 1))
            data[position] = draw(st.integers(0, 255))
        return bytes(data)
    if kind == "insert":
        position = draw(st.integers(0, len(seed)))
        return seed[:position] + draw(st.binary(min_size=1, max_size=64)) + seed[position:]
    if kind == "splice":
        other: bytes = draw(st.sampled_from(SEEDS))
        cut = draw(st.integers(1, 64))
        return seed[:cut] + other[cut:]
    if kind == "header":
        return seed[: draw(st.integers(1, 48))] + draw(st.binary(max_size=256))
    # "dims": overwrite 4 bytes near the start, where formats keep width and height
    data = bytearray(seed)
    position = draw(st.integers(0, min(len(data), 200) - 4))
    value = draw(st.sampled_from([0, 1, 0xFFFF, 0x7FFF, 40_000, 0x7FFFFFFF, 0xFFFFFFFF]))
    data[position:position + 4] = struct.pack(">I", value)
    return bytes(data)


alarm = alarm_fixture(900, "the ingest path hung on a generated file")


def _check_manifest(rows: list[dict[str, object]], n_files: int) -> None:
    assert len(rows) == n_files
    ids = [r["image_id"] for r in rows if r["status"] == "accepted"]
    assert ids == list(range(len(ids)))  # dense, in path order
    for row in rows:
        if row["status"] == "accepted":
            assert row["error"] is None and row["image_id"] is not None
            width, height = row["width"], row["height"]
            assert isinstance(width, int) and isinstance(height, int)
            assert 1 <= width * height <= CONFIG.max_pixels
        else:
            assert row["status"] == "rejected" and row["image_id"] is None
            assert isinstance(row["error"], str) and row["error"]


def test_fuzz_decode_image(alarm: None) -> None:
    outcomes = {"accepted": 0, "rejected": 0}

    @settings(max_examples=1500, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(hostile_bytes())
    def check(data: bytes) -> None:
        start = time.perf_counter()
        try:
            image = decode_image(data, max_pixels=CONFIG.max_pixels)
        except ImageRejected as error:
            assert str(error)
            outcomes["rejected"] += 1
        else:
            assert image.mode == "RGB" and image.width >= 1 and image.height >= 1
            assert np.asarray(image).shape == (image.height, image.width, 3)
            outcomes["accepted"] += 1
        assert time.perf_counter() - start < SLOW_FILE_S

    check()
    assert sum(outcomes.values()) >= 1500
    assert outcomes["accepted"] > 0 and outcomes["rejected"] > 0, outcomes


def test_fuzz_build_manifest_over_5000_files(alarm: None) -> None:
    """Batches of generated files in an in-memory bucket, through the whole listing and
    manifest path; at least 5,000 files in all."""
    files_seen: list[int] = []
    fs = fsspec.filesystem("memory")
    names = st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=["Cs"]),
                    min_size=1, max_size=20)
    suffixes = st.sampled_from(CONFIG.extensions + (".JPG", ".Png"))

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(st.tuples(st.sampled_from(["", "cat/", "dog/", "dog/deep/"]), names,
                              suffixes, hostile_bytes()), min_size=30, max_size=40))
    def check(files: list[tuple[str, str, str, bytes]]) -> None:
        root = f"memory:///fuzz-{uuid.uuid4().hex}"
        try:
            for index, (folder, name, suffix, data) in enumerate(files):
                fs.pipe(f"{root[len('memory://'):]}/{folder}{index:03d}-{name}{suffix}", data)
            start = time.perf_counter()
            manifest = build_manifest(root, CONFIG)
            assert time.perf_counter() - start < SLOW_FILE_S * len(files)
            _check_manifest(manifest.to_pylist(), len(files))
            files_seen.append(len(files))
        finally:
            fs.rm(root[len("memory://"):], recursive=True)

    check()
    assert sum(files_seen) >= 5000, f"only {sum(files_seen)} files were generated"
    print(f"fuzzed {sum(files_seen)} files in {len(files_seen)} manifests")


def test_fuzz_local_names_and_contents(tmp_path: Path, alarm: None) -> None:
    """Local files with generated names (any bytes but '/' and NUL, so not always UTF-8)."""
    counter = iter(range(10**9))
    byte_names = st.binary(min_size=1, max_size=40).map(
        lambda raw: raw.replace(b"/", b"_").replace(b"\x00", b"_"))

    @settings(max_examples=40, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(st.lists(st.tuples(byte_names, st.sampled_from([b".jpg", b".png", b".gif"]),
                              hostile_bytes()), min_size=1, max_size=12))
    def check(files: list[tuple[bytes, bytes, bytes]]) -> None:
        root = os.fsencode(tmp_path / f"run-{next(counter)}")
        os.makedirs(os.path.join(root, b"class"))
        for index, (name, suffix, data) in enumerate(files):
            with open(os.path.join(root, b"class", b"%03d-" % index + name + suffix), "wb") as f:
                f.write(data)
        manifest = build_manifest(os.fsdecode(root), CONFIG)
        rows = manifest.to_pylist()
        _check_manifest(rows, len(files))
        assert all(r["label"] == "class" for r in rows)
        for row in rows:
            str(row["uri"]).encode("utf-8")  # always storable and printable
            if row["status"] == "accepted":
                assert storage.read_bytes(str(row["uri"]))  # the URI reads the very file

    check()
