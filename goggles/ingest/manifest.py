"""Ingest: list image files under a URI, decode and validate each, build the manifest.

A bad file never stops the run: it becomes a manifest row with ``status="rejected"`` and the
reason in ``error``. Accepted rows get dense ``image_id`` 0..N-1 in path order. Every listed file
gets exactly one row.

Hostile inputs and what becomes of them:

* accepted, converted to 8-bit RGB: any Pillow mode (CMYK, grayscale, 16-bit, float, palette,
  transparency composited on white), EXIF-rotated photos (rotated upright), animated images
  (first frame), 1x1 images, duplicate files (each keeps its own row; same ``sha256``);
* rejected with a reason: empty, truncated, corrupt or non-image bytes (HTML, random data),
  formats outside :data:`goggles.io.images.SUPPORTED_FORMATS` (EPS, PSD ...: decoding them can
  run external programs), more than ``max_pixels`` pixels (decompression bombs) or
  ``max_bytes`` bytes, data that covers only part of the declared size (a tiny TIFF claiming
  millions of rows), FIFOs, sockets and devices, symlink loops, files that vanish between
  listing and reading, names that are not valid UTF-8, paths that could resolve outside the
  source prefix, and (unless ``follow_symlinks``) symlinks that lead outside the source.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import stat
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from goggles.ingest.config import IngestConfig
from goggles.io import listing, storage, transfer
from goggles.io.artifacts import MANIFEST_SCHEMA
from goggles.io.images import ImageRejected, decode_image

logger = logging.getLogger(__name__)


# Rejections logged one by one; the rest are counted in one summary line.
_LOGGED_REJECTIONS = 20


@dataclass(frozen=True)
class Record:
    """One manifest row before ``image_id`` and ``status`` are assigned (``error`` None: ok)."""

    uri: str
    sha256: str | None
    width: int | None
    height: int | None
    label: str | None
    error: str | None


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


def precheck(listed: listing.ListedFile, config: IngestConfig) -> str | None:
    """The reason to reject ``listed`` without reading it, or None when it may be read.

    Refuses names that are not valid UTF-8 or that could resolve outside the source prefix, and
    (for local files) what is not a regular file — reading a FIFO blocks forever and a device
    such as /dev/zero never ends — and, unless ``config.follow_symlinks``, a symlink whose
    target lies outside the source.
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
        root = listed.uri[:len(listed.uri) - len(listed.relative)] or "."
        if not config.follow_symlinks and listing.leads_outside(listed.uri, root):
            return ("a symlink that leads outside the source; follow_symlinks "
                    "(--follow-symlinks) includes it")
        size = info.st_size
    if size > config.max_bytes:
        return f"file too large: {size} bytes exceeds max_bytes={config.max_bytes}"
    return None


def inspect_data(listed: listing.ListedFile, data: bytes, config: IngestConfig) -> Record:
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


def refused(listed: listing.ListedFile, config: IngestConfig, reason: str) -> Record:
    """The row of a file rejected without (or before) reading its bytes."""
    label = label_of(listed.relative) if config.labels_from_folders else None
    return Record(printable(listed.uri), None, None, None, label, reason)


def read_and_inspect(listed: listing.ListedFile, config: IngestConfig) -> Record:
    """Read a file that passed :func:`precheck` and validate it; never raises for bad data."""
    try:
        data = storage.read_bytes(listed.uri)
    except (OSError, storage.StorageError) as error:
        return refused(listed, config,
                       f"unreadable: {error} (the file may have vanished after listing)")
    return inspect_data(listed, data, config)


def inspect_file(listed: listing.ListedFile, config: IngestConfig) -> Record:
    """Check, read and validate one listed file; never raises for bad data."""
    reason = precheck(listed, config)
    if reason is not None:
        return refused(listed, config, reason)
    return read_and_inspect(listed, config)


def build_manifest(source_uri: str, config: IngestConfig,
                   listed: list[listing.ListedFile] | None = None) -> pa.Table:
    """List and validate every image under ``source_uri`` (``listed``: the run's listing of it,
    :func:`goggles.io.listing.list_files` with ``config``'s extensions, when it has one).

    Returns
    -------
    pa.Table with ``MANIFEST_SCHEMA``: one row per listed file, accepted ones numbered
    ``image_id`` 0..N-1 in path order.
    """
    return manifest_table(inspect_listed(list_source(source_uri, config, listed), config))


def list_source(source_uri: str, config: IngestConfig,
                listed: list[listing.ListedFile] | None = None) -> list[listing.ListedFile]:
    """The image files under ``source_uri`` in path order (``listed``: the run's listing, when
    it has one); an error when there are none."""
    if listed is None:
        listed = listing.list_files(source_uri, config.extensions,
                                    follow_symlinks=config.follow_symlinks)
    if not listed:
        raise storage.StorageError(
            f"no image files under {source_uri!r} (looked for {', '.join(config.extensions)}); "
            "check the source URI")
    logger.info("ingest: %d files listed under %s", len(listed), printable(source_uri))
    return listed


def inspect_listed(listed: list[listing.ListedFile], config: IngestConfig) -> list[Record]:
    """One :class:`Record` per listed file, in order: each checked, read and validated."""
    records: list[Record | None] = [None] * len(listed)
    to_read: list[int] = []
    for index, file in enumerate(listed):
        reason = precheck(file, config)
        if reason is None:
            to_read.append(index)
        else:
            records[index] = refused(file, config, reason)
    # Only files that passed the precheck are ever opened: a FIFO blocks, /dev/zero never ends.
    # Reads go through transfer.read_many: bounded concurrent requests for remote stores (one at
    # a time for local files), retried, in order; decoding stays in this thread.
    reads = transfer.read_many([listed[index].uri for index in to_read], desc="ingest",
                              sizes=[listed[index].size for index in to_read])
    for index, (_, data) in zip(to_read, reads, strict=True):
        records[index] = (inspect_data(listed[index], data, config) if isinstance(data, bytes)
                          else refused(listed[index], config, f"unreadable: {data} (the file "
                                       "may have vanished after listing)"))
    done = [record for record in records if record is not None]  # all of them: one per file
    _log_summary(done)
    return done


def manifest_table(records: list[Record]) -> pa.Table:
    """The manifest of ``records`` (in path order): accepted ones numbered ``image_id``
    0..N-1."""
    image_ids: list[int | None] = []
    next_id = 0
    for record in records:
        if record.error is None:
            image_ids.append(next_id)
            next_id += 1
        else:
            image_ids.append(None)
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


def join_manifests(parts: list[pa.Table]) -> pa.Table:
    """The manifest of the files of ``parts`` (manifests of consecutive slices of one listing,
    in order), the accepted rows numbered ``image_id`` 0..N-1 again: the manifest
    :func:`build_manifest` writes for the whole listing."""
    joined = pa.concat_tables(parts).combine_chunks() if parts else MANIFEST_SCHEMA.empty_table()
    accepted = pa.compute.equal(joined["status"], "accepted").to_numpy(zero_copy_only=False)
    ids = np.full(len(accepted), -1, dtype=np.int64)
    ids[accepted] = np.arange(int(accepted.sum()))
    column = pa.array(ids, pa.int64(), mask=~accepted)
    return joined.set_column(joined.schema.get_field_index("image_id"), "image_id", column)


def reject(manifest: pa.Table, uris: Collection[str], reason: str) -> pa.Table:
    """``manifest`` with the accepted rows of ``uris`` rejected for ``reason`` (e.g. an image
    that changed after ingest read it) and the accepted rows numbered ``image_id`` 0..N-1 again,
    in path order."""
    doomed = set(uris)
    rows = manifest.to_pylist()
    next_id = 0
    for row in rows:
        if row["status"] == "accepted" and row["uri"] in doomed:
            row.update(status="rejected", error=reason, image_id=None, width=None, height=None)
        if row["status"] == "accepted":
            row["image_id"] = next_id
            next_id += 1
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


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
