"""Ingest: list image files under a URI, decode and validate each, build the manifest.

A bad file never stops the run: it becomes a manifest row with ``status="rejected"`` and the
reason in ``error``. Accepted rows get dense ``image_id`` 0..N-1 in path order. Every listed file
gets exactly one row.

Hostile inputs and what becomes of them:

* accepted, converted to 8-bit RGB: any Pillow mode (CMYK, grayscale, 16-bit, float, palette,
  transparency composited on white), EXIF-rotated photos (rotated upright), animated images
  (first frame), 1x1 images, duplicate files (each keeps its own row; same ``sha256``);
* rejected with a reason: empty, truncated, corrupt or non-image bytes (HTML, random data),
  formats outside :data:`SUPPORTED_FORMATS` (EPS, PSD ...: decoding them can run external
  programs), more than ``max_pixels`` pixels (decompression bombs) or ``max_bytes`` bytes, data
  that covers only part of the declared size (a tiny TIFF claiming millions of rows), FIFOs,
  sockets and devices, symlink loops, files that vanish between listing and reading, names that
  are not valid UTF-8, and paths that could resolve outside the source prefix.
"""

from __future__ import annotations

import collections
import hashlib
import io
import logging
import os
import stat
import warnings
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageFile, ImageOps

from goggles import storage
from goggles.config import IngestConfig

logger = logging.getLogger(__name__)

MANIFEST_SCHEMA = pa.schema([
    ("image_id", pa.int64()),
    ("uri", pa.string()),
    ("sha256", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("label", pa.string()),
    ("status", pa.string()),
    ("error", pa.string()),
])

# Pillow decoders admitted (the raster formats of config.IMAGE_EXTENSIONS). Others are refused
# before decoding: some (EPS) run external programs, and none is an image dataset's format.
# (Pillow's JPEG decoder also opens multi-picture MPO files, as their first picture.)
SUPPORTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "DIB", "WEBP", "TIFF", "PPM")

# Rejections logged one by one; the rest are counted in one summary line.
_LOGGED_REJECTIONS = 20


class ImageRejected(ValueError):
    """The file is not a usable image; the message is the manifest's ``error``."""


@dataclass(frozen=True)
class Record:
    """One manifest row before ``image_id`` and ``status`` are assigned (``error`` None: ok)."""

    uri: str
    sha256: str | None
    width: int | None
    height: int | None
    label: str | None
    error: str | None


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode ``data`` to an RGB image, applying the EXIF orientation.

    Parameters
    ----------
    data : the file's bytes.
    max_pixels : images with more pixels (width x height) are refused before decoding.

    Returns
    -------
    An 8-bit ``RGB`` image of the stored size, rotated upright (EXIF orientations 5-8 swap width
    and height). Animated images give their first frame.

    Raises
    ------
    ImageRejected with a specific reason for empty, non-image, unsupported, truncated, oversized
    (decompression bomb) or otherwise undecodable data.
    """
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    # Pillow's process-wide switch; a truncated image must fail, never decode half grey.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    with warnings.catch_warnings():
        # Pillow warns about corrupt metadata (TIFF tags, EXIF) it skips: the image is then
        # accepted or rejected on its pixels, and thousands of bad files must not flood stderr.
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ImageRejected(f"too many pixels (decompression bomb): {error}") from error
        except Image.UnidentifiedImageError as error:
            raise ImageRejected("not an image: the bytes match no supported image format ("
                                f"{', '.join(SUPPORTED_FORMATS)})") from error
        except OSError as error:
            if "truncated" in str(error).lower():
                raise ImageRejected(f"truncated image: {error}") from error
            raise ImageRejected(f"cannot open image: {type(error).__name__}: {error}") from error
        except Exception as error:  # noqa: BLE001 - any decoder failure is a rejection
            raise ImageRejected(f"cannot open image: {type(error).__name__}: {error}") from error
        width, height = image.size
        if width < 1 or height < 1:
            raise ImageRejected(f"degenerate size {width}x{height}")
        if width * height > max_pixels:
            raise ImageRejected(f"too many pixels: {width}x{height} exceeds max_pixels="
                                f"{max_pixels} (decompression-bomb guard)")
        covered = _covered_pixels(image)
        if covered is not None and covered < width * height:
            raise ImageRejected(f"corrupt image: its data covers {covered} of the {width}x{height}"
                                " pixels it declares")
        try:
            image.load()
        except Image.DecompressionBombWarning as error:
            raise ImageRejected(f"too many pixels (decompression bomb): {error}") from error
        except OSError as error:
            message = str(error)
            if "truncated" in message.lower():
                raise ImageRejected(f"truncated image: {message}") from error
            raise ImageRejected(f"corrupt image data: {message}") from error
        except Exception as error:  # noqa: BLE001
            raise ImageRejected(f"cannot decode image: {type(error).__name__}: {error}") from error
        upright: Image.Image = image
        try:
            upright = ImageOps.exif_transpose(image) or image
        except Exception as error:  # noqa: BLE001 - corrupt EXIF: keep the pixels as stored
            logger.debug("EXIF orientation not applied (%s: %s)", type(error).__name__, error)
        try:
            return to_rgb(upright)
        except Exception as error:  # noqa: BLE001
            raise ImageRejected(f"cannot convert mode {upright.mode!r} to RGB: "
                                f"{type(error).__name__}: {error}") from error


def _covered_pixels(image: Image.Image) -> int | None:
    """Pixels covered by the data blocks (tiles, strips) an opened image lists, or None when the
    decoder does not list them (WebP) or may legitimately leave parts blank (a GIF's first frame
    can be smaller than its canvas). A TIFF of a few hundred bytes can claim millions of rows
    and hold one strip; Pillow would fill the rest with zeros."""
    tiles = getattr(image, "tile", None)
    if not tiles or image.format == "GIF":
        return None
    width, height = image.size
    covered = 0
    try:
        for tile in tiles:
            x0, y0, x1, y1 = tile[1]
            covered += max(0, min(x1, width) - max(x0, 0)) * max(0, min(y1, height) - max(y0, 0))
    except (TypeError, ValueError, IndexError):
        return None
    return covered


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    16-bit, 32-bit and float images are rescaled from their finite min..max to 0..255 (NaN and
    inf become 0); transparency is composited on white.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # float32, in place: a 64-megapixel image needs ~0.3 GB here, not 2 GB
        array = np.array(image, dtype=np.float32)
        finite = np.isfinite(array)
        if not finite.any():
            return Image.new("RGB", image.size)
        low = float(np.min(array, where=finite, initial=np.inf))
        high = float(np.max(array, where=finite, initial=-np.inf))
        array[~finite] = low
        array -= low
        if high > low:
            array *= 255.0 / (high - low)
        np.rint(array, out=array)
        np.clip(array, 0, 255, out=array)
        return Image.fromarray(array.astype(np.uint8)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def label_of(relative: str) -> str | None:
    """The first folder level of a path relative to the source (ImageFolder layout)."""
    parts = relative.split("/")
    return printable(parts[0]) if len(parts) > 1 else None


def printable(text: str) -> str:
    """``text`` as valid UTF-8, so Parquet and logs can hold it: the undecodable bytes of a file
    name (Python's surrogate escapes) are shown as ``\\xNN``."""
    try:
        return text.encode("utf-8").decode("utf-8")
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # lone surrogates that are not escaped bytes
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def precheck(listed: storage.ListedFile, config: IngestConfig) -> str | None:
    """The reason to reject ``listed`` without reading it, or None when it may be read.

    Refuses names that are not valid UTF-8 or that could resolve outside the source prefix, and
    (for local files) what is not a regular file: reading a FIFO blocks forever and a device
    such as /dev/zero never ends.
    """
    if printable(listed.uri) != listed.uri:
        return ("file name is not valid UTF-8 (its bytes are shown as \\xNN); rename the file "
                "to a UTF-8 name to include it")
    parts = listed.relative.split("/")
    if listed.relative.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return (f"path {listed.relative!r} has an empty, '.' or '..' component and could "
                "resolve outside the source prefix; rename the object")
    if "::" in listed.uri:
        return ("'::' in the path is fsspec's URL-chaining separator, so the file could be read "
                "from elsewhere; rename it")
    size = listed.size
    if storage.is_local(listed.uri):
        try:
            info = os.stat(storage.local_path(listed.uri))
        except FileNotFoundError:
            return "vanished: the file was listed but no longer exists (or is a dangling link)"
        except OSError as error:
            return f"unreadable: {error.strerror or error} (a symlink loop?)"
        if not stat.S_ISREG(info.st_mode):
            return ("not a regular file (a FIFO, socket or device); only regular files are "
                    "read")
        size = info.st_size
    if size > config.max_bytes:
        return f"file too large: {size} bytes exceeds max_bytes={config.max_bytes}"
    return None


def inspect_data(listed: storage.ListedFile, data: bytes, config: IngestConfig) -> Record:
    """Validate the bytes read from ``listed``; never raises for bad data."""
    label = label_of(listed.relative) if config.labels_from_folders else None
    digest = hashlib.sha256(data).hexdigest()
    if len(data) > config.max_bytes:  # the file grew after it was listed
        return Record(listed.uri, digest, None, None, label,
                      f"file too large: {len(data)} bytes exceeds max_bytes={config.max_bytes}")
    try:
        image = decode_image(data, max_pixels=config.max_pixels)
    except ImageRejected as error:
        return Record(listed.uri, digest, None, None, label, str(error))
    return Record(listed.uri, digest, image.width, image.height, label, None)


def refused(listed: storage.ListedFile, config: IngestConfig, reason: str) -> Record:
    """The row of a file rejected without (or before) reading its bytes."""
    label = label_of(listed.relative) if config.labels_from_folders else None
    return Record(printable(listed.uri), None, None, None, label, reason)


def read_and_inspect(listed: storage.ListedFile, config: IngestConfig) -> Record:
    """Read a file that passed :func:`precheck` and validate it; never raises for bad data."""
    try:
        data = storage.read_bytes(listed.uri)
    except (OSError, storage.StorageError) as error:
        return refused(listed, config,
                       f"unreadable: {error} (the file may have vanished after listing)")
    return inspect_data(listed, data, config)


def inspect_file(listed: storage.ListedFile, config: IngestConfig) -> Record:
    """Check, read and validate one listed file; never raises for bad data."""
    reason = precheck(listed, config)
    if reason is not None:
        return refused(listed, config, reason)
    return read_and_inspect(listed, config)


def build_manifest(source_uri: str, config: IngestConfig) -> pa.Table:
    """List and validate every image under ``source_uri``.

    Returns
    -------
    pa.Table with ``MANIFEST_SCHEMA``: one row per listed file, accepted ones numbered
    ``image_id`` 0..N-1 in path order.
    """
    listed = storage.list_files(source_uri, config.extensions)
    if not listed:
        raise storage.StorageError(
            f"no image files under {source_uri!r} (looked for {', '.join(config.extensions)}); "
            "check the source URI")
    logger.info("ingest: %d files listed under %s", len(listed), printable(source_uri))
    records: list[Record | None] = [None] * len(listed)
    to_read: list[int] = []
    for index, file in enumerate(listed):
        reason = precheck(file, config)
        if reason is None:
            to_read.append(index)
        else:
            records[index] = refused(file, config, reason)
    # Only files that passed the precheck are ever opened: a FIFO blocks, /dev/zero never ends.
    # Reads go through storage.read_many: bounded concurrent requests for remote stores (one at
    # a time for local files), retried, in order; decoding stays in this thread.
    reads = storage.read_many([listed[index].uri for index in to_read], desc="ingest")
    for index, (_, data) in zip(to_read, reads, strict=True):
        records[index] = (inspect_data(listed[index], data, config) if isinstance(data, bytes)
                          else refused(listed[index], config, f"unreadable: {data} (the file "
                                       "may have vanished after listing)"))
    done = [record for record in records if record is not None]  # all of them: one per file
    _log_summary(done)
    image_ids: list[int | None] = []
    next_id = 0
    for record in done:
        if record.error is None:
            image_ids.append(next_id)
            next_id += 1
        else:
            image_ids.append(None)
    return pa.table({
        "image_id": pa.array(image_ids, pa.int64()),
        "uri": pa.array([r.uri for r in done], pa.string()),
        "sha256": pa.array([r.sha256 for r in done], pa.string()),
        "width": pa.array([r.width for r in done], pa.int32()),
        "height": pa.array([r.height for r in done], pa.int32()),
        "label": pa.array([r.label for r in done], pa.string()),
        "status": pa.array(["accepted" if r.error is None else "rejected" for r in done]),
        "error": pa.array([r.error for r in done], pa.string()),
    }, schema=MANIFEST_SCHEMA)


def _log_summary(records: list[Record]) -> None:
    """Warn about rejections (the first few one by one), mixed labels and duplicates."""
    rejected = [r for r in records if r.error is not None]
    for record in rejected[:_LOGGED_REJECTIONS]:
        logger.warning("rejected %r: %s", record.uri, record.error)
    if rejected:
        logger.warning("ingest: %d of %d files rejected; the manifest's error column has every "
                       "reason", len(rejected), len(records))
    kept = [r for r in records if r.error is None]
    labels = {r.label for r in kept}
    if None in labels and len(labels) > 1:
        logger.warning("some images sit directly under the source and others in folders; "
                       "ground-truth labels are only used when every image has one")
    counts = collections.Counter(r.sha256 for r in kept)
    duplicates = sum(c - 1 for c in counts.values() if c > 1)
    if duplicates:
        logger.info("ingest: %d accepted files repeat the content of another (same sha256); "
                    "each keeps its own row and label", duplicates)


def accepted(manifest: pa.Table) -> pa.Table:
    """Accepted rows, ordered by ``image_id``."""
    rows = manifest.filter(pc.equal(manifest["status"], "accepted"))
    return rows.sort_by("image_id")
