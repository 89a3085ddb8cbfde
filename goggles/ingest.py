"""Ingest: list image files under a URI, decode and validate each, build the manifest.

A bad file never stops the run: it becomes a manifest row with ``status="rejected"`` and the
reason in ``error``. Accepted rows get dense ``image_id`` 0..N-1 in path order.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image, ImageFile, ImageOps
from tqdm.auto import tqdm

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


class ImageRejected(ValueError):
    """The file is not a usable image; the message is the manifest's ``error``."""


@dataclass(frozen=True)
class Record:
    uri: str
    sha256: str | None
    width: int | None
    height: int | None
    label: str | None
    error: str | None


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode ``data`` to an RGB image, applying the EXIF orientation.

    Raises :class:`ImageRejected` with a specific reason for empty, non-image, truncated,
    oversized (decompression bomb) or otherwise undecodable data.
    """
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as error:
            raise ImageRejected(f"too many pixels (decompression bomb): {error}") from error
        except Image.UnidentifiedImageError as error:
            raise ImageRejected("not an image: the bytes match no known image format") from error
        except Exception as error:  # noqa: BLE001 - any decoder failure is a rejection
            raise ImageRejected(f"cannot open image: {type(error).__name__}: {error}") from error
        width, height = image.size
        if width * height > max_pixels:
            raise ImageRejected(f"too many pixels: {width}x{height} exceeds max_pixels="
                                f"{max_pixels} (decompression-bomb guard)")
        if width < 1 or height < 1:
            raise ImageRejected(f"degenerate size {width}x{height}")
        try:
            image.load()
            image = ImageOps.exif_transpose(image) or image
            return to_rgb(image)
        except Image.DecompressionBombWarning as error:
            raise ImageRejected(f"too many pixels (decompression bomb): {error}") from error
        except OSError as error:
            message = str(error)
            if "truncated" in message.lower():
                raise ImageRejected(f"truncated image: {message}") from error
            raise ImageRejected(f"corrupt image data: {message}") from error
        except Exception as error:  # noqa: BLE001
            raise ImageRejected(f"cannot decode image: {type(error).__name__}: {error}") from error


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (16-bit and float images are rescaled, transparency is
    composited on white)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = np.zeros_like(array) if high <= low else (array - low) / (high - low) * 255.0
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def label_of(relative: str) -> str | None:
    """The first folder level of a path relative to the source (ImageFolder layout)."""
    parts = relative.split("/")
    return parts[0] if len(parts) > 1 else None


def inspect_file(listed: storage.ListedFile, config: IngestConfig) -> Record:
    """Read and validate one listed file; never raises for bad data."""
    label = label_of(listed.relative) if config.labels_from_folders else None
    if listed.size > config.max_bytes:
        return Record(listed.uri, None, None, None, label,
                      f"file too large: {listed.size} bytes exceeds max_bytes={config.max_bytes}")
    try:
        data = storage.read_bytes(listed.uri)
    except (OSError, storage.StorageError) as error:
        return Record(listed.uri, None, None, None, label,
                      f"unreadable: {error} (the file may have vanished after listing)")
    digest = hashlib.sha256(data).hexdigest()
    try:
        image = decode_image(data, max_pixels=config.max_pixels)
    except ImageRejected as error:
        return Record(listed.uri, digest, None, None, label, str(error))
    return Record(listed.uri, digest, image.width, image.height, label, None)


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
    logger.info("ingest: %d files listed under %s", len(listed), source_uri)
    records = [inspect_file(f, config)
               for f in tqdm(listed, desc="ingest", unit="img", disable=None)]
    labels = {r.label for r in records if r.error is None}
    if None in labels and len(labels) > 1:
        logger.warning("some images sit directly under the source and others in folders; "
                       "ground-truth labels are only used when every image has one")
    image_ids: list[int | None] = []
    next_id = 0
    for record in records:
        if record.error is None:
            image_ids.append(next_id)
            next_id += 1
        else:
            image_ids.append(None)
            logger.warning("rejected %s: %s", record.uri, record.error)
    return pa.table({
        "image_id": pa.array(image_ids, pa.int64()),
        "uri": pa.array([r.uri for r in records], pa.string()),
        "sha256": pa.array([r.sha256 for r in records], pa.string()),
        "width": pa.array([r.width for r in records], pa.int32()),
        "height": pa.array([r.height for r in records], pa.int32()),
        "label": pa.array([r.label for r in records], pa.string()),
        "status": pa.array(["accepted" if r.error is None else "rejected" for r in records]),
        "error": pa.array([r.error for r in records], pa.string()),
    }, schema=MANIFEST_SCHEMA)


def accepted(manifest: pa.Table) -> pa.Table:
    """Accepted rows, ordered by ``image_id``."""
    import pyarrow.compute as pc

    rows = manifest.filter(pc.equal(manifest["status"], "accepted"))
    return rows.sort_by("image_id")
