"""Decoding an image file safely: any Pillow mode to 8-bit RGB, or a specific reason to reject.

Used by ingest (to validate every file), extraction (to read the accepted ones) and the report
(thumbnails and patches): an image is decoded the same way wherever it is read.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps

from goggles.config import StageError
from goggles.io.uris import redact

logger = logging.getLogger(__name__)

# Pillow decoders admitted (the raster formats of config.IMAGE_EXTENSIONS). Others are refused
# before decoding: some (EPS) run external programs, and none is an image dataset's format.
# (Pillow's JPEG decoder also opens multi-picture MPO files, as their first picture.)
SUPPORTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "DIB", "WEBP", "TIFF", "PPM")

class ImageRejected(ValueError):
    """The file is not a usable image; the message is the manifest's ``error``."""


CHANGED = "changed during the run"
"""The reason given for an image whose bytes no longer match the sha256 ingest recorded."""


class ImageChanged(StageError):
    """Images whose bytes changed between ingest and a later stage's read: their features are
    not kept (a feature cache would hold the new picture's under the old content's hash)."""

    def __init__(self, uris: list[str]):
        self.uris = uris
        super().__init__(f"{len(uris)} image(s) {CHANGED}: the bytes read no longer match the "
                         f"sha256 ingest recorded, e.g. {redact(uris[0])}; nothing was kept or "
                         "cached for them. Rerun when the source is no longer being written: "
                         "ingest reads them again")


def changed_since_ingest(data: bytes, sha256: str | None) -> bool:
    """Whether ``data``, the bytes a later stage read, are not those whose SHA-256 ingest
    recorded (``sha256``; None or empty: nothing to check). One pass over the bytes already in
    memory, no second read: ~1 ms for a 1 MB photo, against tens of ms to decode it."""
    return bool(sha256) and hashlib.sha256(data).hexdigest() != sha256


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
