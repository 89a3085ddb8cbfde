"""What a rerun trusts about a source before it reuses an ingest: cheap metadata first, content
where metadata could lie.

A local file's modification time is set back by ``cp -p``, ``rsync -t`` and ``tar``, so a file
rewritten with another picture of the same size can keep its size and mtime. Its change time
(ctime) and inode cannot be set back by a user: every write, rename or replacement moves them.
So, against the record of the last ingest (each file's size, mtime, ctime, inode and the sha256
of the bytes ingest read):

* a file whose size, mtime, ctime and inode all match is trusted unread;
* a file of the same size whose other metadata changed (a ``touch``, ``chmod``, a copy with
  ``cp -p``) is re-hashed: its content decides;
* a file added, removed or of another size is a change;
* with ``verify`` every local file of the same size is re-hashed (for file systems whose ctime
  cannot be trusted: some network and FUSE mounts), and so is every file of a local source of at
  most :data:`VERIFY_BELOW_BYTES` in all, where hashing costs next to nothing: 11 ms for the
  rerun benchmark's 236 cub-dev images (2.1 MB), against 72 s of ingest + extract on the same
  2-core machine (``benchmarks/verify.py``).

An object in a store is trusted by its size and version (the generation or ETag, which the store
derives from each write and no client sets); its bytes are not read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from goggles.io import storage
from goggles.io.listing import ListedFile

VERIFY_BELOW_BYTES = 256 * 2**20
"""A local source of at most this many bytes is checked by content on every rerun, as with
``verify``: hashing it costs ~2 s at the ~130 MB/s measured (a larger one pays that per 256 MiB
on every rerun, even one that reuses everything, so it trusts metadata unless asked)."""

Recorded = dict[str, list[Any]]
"""relative path -> [size, version, identity, sha256 or None] (JSON-serialisable)."""


def file_sha256(uri: str) -> str:
    """The sha256 (hex) of a local file's bytes, read in 1 MiB pieces."""
    return storage.fingerprint(uri).removeprefix("sha256:")


def record(files: Sequence[ListedFile], manifest: pa.Table) -> Recorded:
    """The state to trust on the next run: the listing taken before ingest, with the sha256 ingest
    computed from the bytes it read (``None`` for files rejected unread). A file rewritten
    between the listing and ingest's read is caught on the next run: its metadata differs, so it
    is re-hashed and compared with what ingest read."""
    sha = dict(zip(manifest["uri"].to_pylist(), manifest["sha256"].to_pylist(), strict=True))
    return {f.relative: [f.size, f.version, f.identity, sha.get(f.uri)] for f in files}


def content_listing(recorded: Recorded) -> list[tuple[str, int, str]]:
    """(relative, size, content) per file, for the keys of the stages after ingest: the sha256
    where ingest read the file, else its metadata."""
    return [(relative, int(size), sha or f"{version}|{identity}")
            for relative, (size, version, identity, sha) in sorted(recorded.items())]


def hash_all(files: Sequence[ListedFile], verify: bool,
             below: int = VERIFY_BELOW_BYTES) -> bool:
    """Whether every local file is to be hashed: asked (``verify``), or a local source of at
    most ``below`` bytes in all."""
    local = [f.size for f in files if storage.is_local(f.uri)]
    return verify or (bool(local) and sum(max(0, size) for size in local) <= below)


def first_change(files: Sequence[ListedFile], recorded: Recorded | None, *,
                 verify: bool = False, below: int = VERIFY_BELOW_BYTES) -> str | None:
    """Why ``files`` may differ from ``recorded`` (the first file found, in one phrase), or
    ``None`` when the source is the one the record describes (see the module docstring)."""
    verify = hash_all(files, verify, below)
    if not recorded:
        return "no record of the source"
    if len(files) != len(recorded):
        return f"{len(files)} files listed, {len(recorded)} recorded"
    for file in files:
        entry = recorded.get(file.relative)
        if entry is None:
            return f"{file.relative} is new"
        size, version, identity, sha = entry
        if file.size != size:
            return f"{file.relative} changed size"
        if not storage.is_local(file.uri):
            if file.version != version:
                return f"{file.relative} has a new version"
            continue
        if file.version == version and file.identity == identity and not verify:
            continue
        if sha is None:  # rejected unread: nothing to compare the content with
            return f"{file.relative} changed"
        try:
            if file_sha256(file.uri) != sha:
                return f"{file.relative} has new content"
        except (OSError, storage.StorageError):
            return f"{file.relative} cannot be read"
    return None


def fingerprint_entries(files: Sequence[ListedFile], *, verify: bool = False,
                        below: int = VERIFY_BELOW_BYTES) -> list[tuple[str, int, str]]:
    """(relative, size, version) per file for a listing digest with no record to compare with
    (the pipeline's uncached listing task): a local file's version is its mtime, ctime and inode
    (a rewrite moves the ctime; a ``chmod`` does too, and is taken for a change) or, with
    ``verify`` or for a local source of at most ``below`` bytes, the sha256 of its bytes; an
    object's is its generation or ETag."""
    verify = hash_all(files, verify, below)
    entries = []
    for file in files:
        if storage.is_local(file.uri):
            version = (f"sha256:{_sha_or_missing(file.uri)}" if verify
                       else f"{file.version}|{file.identity}")
        else:
            version = file.version
        entries.append((file.relative, file.size, version))
    return entries


def _sha_or_missing(uri: str) -> str:
    try:
        return file_sha256(uri)
    except (OSError, storage.StorageError):
        return "unreadable"

