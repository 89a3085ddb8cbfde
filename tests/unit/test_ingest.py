"""goggles.ingest: decoding, RGB conversion, labels, prechecks and the manifest."""

from __future__ import annotations

import hashlib
import io
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from goggles.config import StageError
from goggles.ingest.config import IngestConfig
from goggles.ingest.manifest import (
    build_manifest,
    inspect_data,
    inspect_file,
    label_of,
    precheck,
    printable,
)
from goggles.io import listing, storage
from goggles.io.artifacts import MANIFEST_SCHEMA, accepted
from goggles.io.images import ImageRejected, decode_image, to_rgb
from tests.conftest import small_source


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise(width: int = 24, height: int = 16, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# -- decode_image / to_rgb ----------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PPM"])
def test_every_listed_format_decodes_to_rgb_of_its_size(fmt: str) -> None:
    image = decode_image(encode(noise(24, 16), fmt), max_pixels=10_000)
    assert image.mode == "RGB" and image.size == (24, 16)


def test_png_pixels_survive_decoding_exactly() -> None:
    original = noise(9, 7, seed=3)
    decoded = decode_image(encode(original, "PNG"), max_pixels=10_000)
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(original))


def test_max_pixels_is_the_limit_not_pillows() -> None:
    data = encode(noise(30, 20), "PNG")
    assert decode_image(data, max_pixels=600).size == (30, 20)
    with pytest.raises(ImageRejected, match=r"too many pixels: 30x20 exceeds max_pixels=599"):
        decode_image(data, max_pixels=599)


def test_to_rgb_rescales_16_bit_and_float_images() -> None:
    ramp = np.linspace(0, 65535, 64).reshape(8, 8).astype(np.uint16)
    rgb = np.asarray(to_rgb(Image.fromarray(ramp)))
    assert rgb.shape == (8, 8, 3) and rgb.min() == 0 and rgb.max() == 255
    assert (np.diff(rgb[..., 0].ravel().astype(int)) >= 0).all()  # order kept
    flat = np.asarray(to_rgb(Image.fromarray(np.full((4, 4), 7.5, np.float32))))
    assert (flat == 0).all()


def test_to_rgb_maps_nan_and_inf_to_black_without_warnings() -> None:
    values = np.array([[np.nan, 1.0], [np.inf, 3.0]], dtype=np.float32)
    with np.errstate(all="raise"):
        rgb = np.asarray(to_rgb(Image.fromarray(values)))
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[1, 0].tolist() == [0, 0, 0]
    assert rgb[0, 1, 0] == 0 and rgb[1, 1, 0] == 255
    all_nan = to_rgb(Image.fromarray(np.full((2, 3), np.nan, np.float32)))
    assert all_nan.size == (3, 2) and not np.asarray(all_nan).any()


def test_to_rgb_composites_transparency_on_white() -> None:
    rgba = Image.new("RGBA", (2, 1), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 255, 0))  # fully transparent blue
    rgb = np.asarray(to_rgb(rgba))
    assert rgb[0, 0].tolist() == [255, 0, 0] and rgb[0, 1].tolist() == [255, 255, 255]
    la = np.asarray(to_rgb(Image.new("LA", (1, 1), (0, 0))))
    assert la[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize("mode", ["1", "L", "P", "CMYK", "YCbCr", "LAB", "HSV", "I", "F",
                                  "RGBA", "LA", "RGBX"])
def test_to_rgb_accepts_every_common_mode(mode: str) -> None:
    image = noise(5, 4).convert(mode) if mode not in ("I", "F") else \
        noise(5, 4).convert("L").convert(mode)
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (5, 4)


# -- labels and names ---------------------------------------------------------------------------

def test_label_is_the_first_folder_level() -> None:
    assert label_of("cat/a.jpg") == "cat"
    assert label_of("cat/indoor/deep/a.jpg") == "cat"
    assert label_of("a.jpg") is None


def test_printable_escapes_undecodable_bytes_only() -> None:
    assert printable("ünïcödé 猫.jpg") == "ünïcödé 猫.jpg"
    escaped = printable(b"caf\xe9.jpg".decode("utf-8", "surrogateescape"))
    assert escaped == "caf\\xe9.jpg"
    assert printable("lone \ud800 surrogate") == "lone \\ud800 surrogate"
    escaped.encode("utf-8")


# -- precheck / inspect -------------------------------------------------------------------------

def listed_file(path: Path, root: Path) -> listing.ListedFile:
    return listing.ListedFile(str(path), path.relative_to(root).as_posix(),
                              path.stat().st_size if path.exists() else -1)


@pytest.mark.parametrize(("fmt", "keep"), [("JPEG", 6), ("PNG", 16), ("BMP", 18)])
def test_a_file_cut_inside_its_header_is_reported_as_truncated(fmt: str, keep: int) -> None:
    """Cut before the pixel data, Pillow fails while opening: the reason still says
    truncated (as for a file cut inside its pixels), not a generic failure."""
    data = encode(noise(), fmt)[:keep]
    with pytest.raises(ImageRejected, match=r"^truncated image: "):
        decode_image(data, max_pixels=10_000)
    cut_in_pixels = encode(noise(), fmt)
    with pytest.raises(ImageRejected, match=r"^truncated image: "):
        decode_image(cut_in_pixels[: len(cut_in_pixels) - 40], max_pixels=10_000)


def test_pillow_bomb_warning_is_a_rejection_even_under_a_high_max_pixels() -> None:
    """Between Pillow's MAX_IMAGE_PIXELS and twice that, Pillow only warns: ingest must still
    refuse the file as a decompression bomb, whatever max_pixels allows."""
    from tests.conftest import png_claiming

    side = int((Image.MAX_IMAGE_PIXELS * 1.2) ** 0.5)
    assert Image.MAX_IMAGE_PIXELS < side * side < 2 * Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageRejected, match=r"^too many pixels \(decompression bomb\)"):
        decode_image(png_claiming(side, side), max_pixels=10**10)


def test_covered_pixels_counts_tile_areas_clipped_to_the_image() -> None:
    from goggles.io.images import _covered_pixels

    image = Image.new("RGB", (4, 3))
    image.tile = [("raw", extents, 0, "RGB") for extents in [  # type: ignore[misc]
        (0, 0, 4, 2),  # 8 pixels
        (2, 2, 9, 9),  # clipped to 2 x 1
        (-3, 2, 1, 3),  # clipped to 1 x 1
        (10, 0, 14, 3), (0, 10, 4, 14), (-3, -3, -1, -1),  # outside: nothing
    ]]
    assert _covered_pixels(image) == 11
    image.tile = []
    assert _covered_pixels(image) is None
    image.tile = [("raw", (0, 0), 0, "RGB")]  # type: ignore[list-item]  # not a box
    assert _covered_pixels(image) is None


def test_precheck_uses_the_size_on_disk_not_the_listed_one(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(encode(noise(), "PNG"))
    listed = listed_file(path, tmp_path)
    path.write_bytes(encode(noise(seed=1), "PNG") + b"\0" * 5000)  # grew after listing
    reason = precheck(listed, IngestConfig(max_bytes=listed.size + 100))
    assert reason is not None and f"{path.stat().st_size} bytes exceeds" in reason


def test_precheck_passes_a_plain_file(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(encode(noise(), "PNG"))
    assert precheck(listed_file(tmp_path / "a.png", tmp_path), IngestConfig()) is None


def test_precheck_refuses_large_files_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(encode(noise(), "PNG"))
    reason = precheck(listed_file(path, tmp_path), IngestConfig(max_bytes=10))
    assert reason is not None and "exceeds max_bytes=10" in reason


@pytest.mark.parametrize("relative", ["../x.jpg", "a/../../x.jpg", "a//x.jpg", "./x.jpg"])
def test_precheck_refuses_paths_that_could_leave_the_prefix(relative: str) -> None:
    listed = listing.ListedFile(f"memory://src/{relative}", relative, 10)
    reason = precheck(listed, IngestConfig())
    assert reason is not None and "outside the source prefix" in reason


def test_inspect_data_rejects_data_that_grew_past_max_bytes() -> None:
    listed = listing.ListedFile("memory://src/a.png", "a.png", 1)
    record = inspect_data(listed, encode(noise(), "PNG"), IngestConfig(max_bytes=100))
    assert record.error is not None and "exceeds max_bytes=100" in record.error
    assert record.sha256 is not None


def test_max_bytes_is_the_largest_size_accepted(tmp_path: Path) -> None:
    """A file of exactly max_bytes is read and accepted; one byte less allowed rejects it."""
    data = encode(noise(), "PNG")
    path = tmp_path / "a.png"
    path.write_bytes(data)
    listed = listed_file(path, tmp_path)
    exact, below = IngestConfig(max_bytes=len(data)), IngestConfig(max_bytes=len(data) - 1)
    assert precheck(listed, exact) is None
    assert inspect_data(listed, data, exact).error is None
    assert f"file too large: {len(data)} bytes exceeds" in str(precheck(listed, below))
    assert f"file too large: {len(data)} bytes exceeds" in str(inspect_data(listed, data,
                                                                             below).error)
    remote = listing.ListedFile("memory://src/a.png", "a.png", len(data))  # size as listed
    assert precheck(remote, exact) is None and precheck(remote, below) is not None


def test_inspect_file_records_size_digest_and_label(tmp_path: Path) -> None:
    data = encode(noise(24, 16), "PNG")
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "a.png").write_bytes(data)
    record = inspect_file(listed_file(tmp_path / "dog" / "a.png", tmp_path), IngestConfig())
    assert record.error is None and (record.width, record.height) == (24, 16)
    assert record.label == "dog"
    assert record.sha256 == hashlib.sha256(data).hexdigest()
    unlabeled = inspect_file(listed_file(tmp_path / "dog" / "a.png", tmp_path),
                             IngestConfig(labels_from_folders=False))
    assert unlabeled.label is None


# -- build_manifest -----------------------------------------------------------------------------

def test_manifest_schema_ids_and_order(tmp_path: Path) -> None:
    for name in ("b/2.png", "a/1.png", "a/0.jpg", "b/bad.jpg"):
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"not an image" if "bad" in name
                         else encode(noise(), "JPEG" if name.endswith("jpg") else "PNG"))
    (tmp_path / "a" / "notes.txt").write_text("ignored: not an image suffix")
    manifest = build_manifest(str(tmp_path), IngestConfig())
    assert manifest.schema == MANIFEST_SCHEMA
    rows = manifest.to_pylist()
    assert [Path(r["uri"]).relative_to(tmp_path).as_posix() for r in rows] == \
        ["a/0.jpg", "a/1.png", "b/2.png", "b/bad.jpg"]
    assert [r["image_id"] for r in rows] == [0, 1, 2, None]
    assert [r["status"] for r in rows] == ["accepted"] * 3 + ["rejected"]
    assert [r["label"] for r in rows] == ["a", "a", "b", "b"]
    assert rows[3]["error"].startswith("not an image") and rows[3]["width"] is None
    assert accepted(manifest)["image_id"].to_pylist() == [0, 1, 2]


def test_manifest_from_memory_filesystem() -> None:
    root = f"memory:///ingest-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    fs.pipe(f"{root}/x/one.png", encode(noise(), "PNG"))
    fs.pipe(f"{root}/y/two.jpg", encode(noise(), "JPEG"))
    fs.pipe(f"{root}/y/empty.jpg", b"")
    manifest = build_manifest(root, IngestConfig())
    assert manifest.num_rows == 3
    by_name = {r["uri"].rsplit("/", 1)[-1]: r for r in manifest.to_pylist()}
    assert by_name["one.png"]["label"] == "x" and by_name["one.png"]["status"] == "accepted"
    assert by_name["empty.jpg"]["error"] == "empty file (0 bytes)"
    assert all(r["uri"].startswith(root + "/") for r in by_name.values())


def test_empty_source_names_the_fix(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(storage.StorageError, match="no image files under .* check the source"):
        build_manifest(str(tmp_path), IngestConfig())


def test_accepted_orders_by_image_id() -> None:
    table = pa.table({"image_id": pa.array([1, None, 0], pa.int64()),
                      "status": ["accepted", "rejected", "accepted"], "uri": ["b", "x", "a"]})
    assert accepted(table)["uri"].to_pylist() == ["a", "b"]


def _png_bytes(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (value, 0, 0)).save(buffer, "PNG")
    return buffer.getvalue()


def test_symlinks_out_of_the_source_are_followed_only_when_asked(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source, outside = tmp_path / "source", tmp_path / "outside"
    (source / "a").mkdir(parents=True)
    (outside / "folder").mkdir(parents=True)
    (source / "a" / "own.png").write_bytes(_png_bytes(1))
    (outside / "secret.png").write_bytes(_png_bytes(2))
    (outside / "folder" / "more.png").write_bytes(_png_bytes(3))
    (source / "a" / "linked.png").symlink_to(outside / "secret.png")
    (source / "a" / "inside.png").symlink_to(source / "a" / "own.png")
    (source / "b").symlink_to(outside / "folder", target_is_directory=True)
    with caplog.at_level("WARNING"):
        manifest = {Path(str(r["uri"])).name: r
                    for r in build_manifest(str(source), IngestConfig()).to_pylist()}
    assert set(manifest) == {"own.png", "inside.png", "linked.png"}  # b/ is not entered
    assert manifest["own.png"]["status"] == manifest["inside.png"]["status"] == "accepted"
    assert manifest["linked.png"]["status"] == "rejected"
    assert "leads outside the source" in str(manifest["linked.png"]["error"])
    assert "--follow-symlinks" in str(manifest["linked.png"]["error"])
    assert "symlinked folder leads outside the source" in caplog.text
    followed = {Path(str(r["uri"])).name: r["status"] for r in build_manifest(
        str(source), IngestConfig(follow_symlinks=True)).to_pylist()}
    assert followed == {"own.png": "accepted", "inside.png": "accepted",
                        "linked.png": "accepted", "more.png": "accepted"}


@pytest.mark.parametrize("parts", [1, 3, 7])
def test_ingest_in_parts_joins_to_the_one_task_manifest(tmp_path: Path, parts: int) -> None:
    """A cluster validates the listing in slices (one task each) and joins them: the manifest
    is byte for byte the one a single ingest writes, a rejected file in a middle slice and the
    ids renumbered 0..N-1 across slices."""
    from goggles.pipeline import stages

    source = small_source(tmp_path / "source", 6)
    config = IngestConfig()
    stages.run_ingest(config, str(source), str(tmp_path / "one.parquet"))
    listed = stages.source_fingerprint(config, str(source))
    uris = [str(tmp_path / f"part-{s}") for s in range(parts)]
    for shard_id, uri in enumerate(uris):
        stages.run_ingest_part(config, str(source), shard_id, parts, listed["listing"], uri)
    counts = stages.run_join_manifest(uris[::-1], str(tmp_path / "joined.parquet"))
    assert counts == {"n_listed": 7, "n_images": 6, "n_rejected": 1}
    one = storage.read_parquet(str(tmp_path / "one.parquet"))
    joined = storage.read_parquet(str(tmp_path / "joined.parquet"))
    assert joined.equals(one)
    assert joined["image_id"].to_pylist().count(None) == 1


def test_an_ingest_part_refuses_a_source_that_changed_since_the_listing(tmp_path: Path) -> None:
    from goggles.pipeline import stages

    source = small_source(tmp_path / "source", 4, bad=False)
    listed = stages.source_fingerprint(IngestConfig(), str(source))
    (source / "b" / "new.png").write_bytes((source / "b" / "0.png").read_bytes())
    with pytest.raises(StageError, match="changed while this run was ingesting it"):
        stages.run_ingest_part(IngestConfig(), str(source), 0, 2, listed["listing"],
                               str(tmp_path / "part"))
    stages.run_ingest_part(IngestConfig(), str(source), 0, 2,
                           stages.source_fingerprint(IngestConfig(), str(source))["listing"],
                           str(tmp_path / "part"))
    with pytest.raises(StageError, match="ingest parts do not tile the files"):
        stages.run_join_manifest([str(tmp_path / "part"), str(tmp_path / "part")],
                                 str(tmp_path / "m.parquet"))
