"""Listing folders and buckets: the files under a URI, with their sizes.

Remote stores are listed with their paginated listing (one ``find``: 1,000 objects a request),
never a request per object; local folders are walked following symlinked folders, each real
folder once, so a symlink loop cannot run forever.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec

from goggles.io import storage
from goggles.io.uris import is_local, join, local_path, protocol_of, redact

logger = logging.getLogger(__name__)


def unstrip(fs: fsspec.AbstractFileSystem, path: str, like: str) -> str:
    """Turn a path inside ``fs`` back into a URI of the same form as ``like``."""
    if is_local(like):
        return path
    return f"{protocol_of(like)}://{path.lstrip('/') if protocol_of(like) != 'memory' else path}"


# -- folders -------------------------------------------------------------------------------------

def _list_all(uri: str) -> dict[str, int]:
    """Relative name -> size of every file under folder ``uri`` (none if it does not exist)."""
    if is_local(uri):
        root = local_path(uri)
        if not os.path.isdir(root):
            return {}
        return {os.path.relpath(full, root).replace(os.sep, "/"): size
                for full, size, _, _ in _walk_local(root)}
    fs, root = storage.filesystem(uri)
    root = root.rstrip("/")
    fs.invalidate_cache(root)
    try:
        listing = storage.retrying("list", uri, lambda: fs.find(root, detail=True))
    except storage.MissingObjectError:
        return {}
    return {path[len(root):].lstrip("/"): int(info.get("size") or 0)
            for path, info in listing.items() if info.get("type") != "directory"}


def list_folder(uri: str) -> dict[str, int]:
    """Relative name -> size of the files under folder ``uri``, without temporaries (one
    paginated listing on object stores)."""
    return {name: size for name, size in _list_all(uri).items() if not storage.is_temporary(name)}


def remove_temporaries(uri: str) -> int:
    """Delete the hidden temporaries that killed writers left under folder ``uri``; returns how
    many. Only for a folder no live writer is using."""
    leftovers = [name for name in _list_all(uri) if storage.is_temporary(name)]
    for name in leftovers:
        storage.remove(join(uri, *name.split("/")))
    if leftovers:
        logger.info("removed %d temporaries left by interrupted writers under %s",
                    len(leftovers), redact(uri))
    return len(leftovers)


@dataclass(frozen=True)
class ListedFile:
    """A listed file: its URI, its path relative to the listed folder, its size, a version that
    changes when its content is rewritten (local: the modification time in ns, which ``cp -p``,
    ``rsync -t`` and ``tar`` set back; object stores: the generation or ETag, which no client
    sets) and, for a local file, its ``identity``: the change time in ns and the inode, which
    every rewrite or replacement changes and no user can set back. For resume keys."""

    uri: str
    relative: str
    size: int
    version: str = ""
    identity: str = ""


def _remote_version(info: dict) -> str:  # type: ignore[type-arg]
    for key in ("generation", "ETag", "etag", "md5Hash", "crc32c", "mtime", "LastModified",
                "updated"):
        if info.get(key):
            return str(info[key])
    return ""


def _outside(path: str, root_real: str) -> bool:
    real = os.path.realpath(path)
    return real != root_real and not real.startswith(root_real.rstrip(os.sep) + os.sep)


def _walk_local(root: str, follow_symlinks: bool = True
                ) -> Iterator[tuple[str, int, int, str]]:
    """Files under ``root``, following symlinked folders but entering each real folder once, so a
    symlink loop cannot run forever. Paths stay under ``root`` (the link's path, not its target).
    Yields (path, size, modification time in ns, ``change time in ns:inode``); -1 for the
    numbers and "" for the identity when the file cannot be read.
    Without ``follow_symlinks``, a symlinked folder that leads outside ``root`` is skipped (files
    that do are still yielded: ingest rejects each with its reason)."""
    visited: set[str] = set()
    root_real = os.path.realpath(root)
    for folder, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited:
            logger.warning("skipping %s: a symlink loop leads back to %s", folder, real)
            dirnames[:] = []
            continue
        visited.add(real)
        if not follow_symlinks:
            outside = [d for d in dirnames if os.path.islink(os.path.join(folder, d))
                       and _outside(os.path.join(folder, d), root_real)]
            for name in outside:
                logger.warning("skipping %s: the symlinked folder leads outside the source; "
                               "follow_symlinks (--follow-symlinks) includes it",
                               os.path.join(folder, name))
            dirnames[:] = [d for d in dirnames if d not in outside]
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(folder, name)
            try:
                info = os.stat(full)
                size, mtime = info.st_size, info.st_mtime_ns
                identity = f"{info.st_ctime_ns}:{info.st_dev}:{info.st_ino}"
            except OSError:
                size = mtime = -1  # dangling link or vanished file: ingest records the reason
                identity = ""
            yield full, size, mtime, identity


def has_files(folder: str, extensions: tuple[str, ...], follow_symlinks: bool = True) -> bool:
    """Whether local ``folder`` holds at least one file with a suffix in ``extensions`` (without
    ``follow_symlinks``: one that is not a link leading outside it); stops at the first."""
    suffixes = tuple(e.lower() for e in extensions)
    root_real = os.path.realpath(folder)
    return any(full.lower().endswith(suffixes)
               and (follow_symlinks or not (os.path.islink(full) and _outside(full, root_real)))
               for full, _, _, _ in _walk_local(folder, follow_symlinks))


def leads_outside(path: str, root: str) -> bool:
    """Whether local ``path`` under ``root`` is a symlink whose target lies outside ``root``."""
    return os.path.islink(path) and _outside(path, os.path.realpath(root))


class SourceListing:
    """One run's listing of its source: the first question for a set of extensions lists the
    source (:func:`list_files`), every later one gets the same answer, so that a run lists its
    source once however many steps (the checks, the resume keys, ingest) read it.

    Made per run (never module-level), for the run's absolute ``root_uri``."""

    def __init__(self, root_uri: str) -> None:
        self.root_uri = root_uri
        self._listed: dict[tuple[tuple[str, ...], bool], list[ListedFile]] = {}

    def files(self, extensions: tuple[str, ...], *,
              follow_symlinks: bool = True) -> list[ListedFile]:
        """:func:`list_files` of the source, listed at the first call with these arguments."""
        key = (tuple(extensions), follow_symlinks)
        if key not in self._listed:
            self._listed[key] = list_files(self.root_uri, key[0], follow_symlinks=follow_symlinks)
        return self._listed[key]


def list_files(root_uri: str, extensions: tuple[str, ...], *,
               follow_symlinks: bool = True) -> list[ListedFile]:
    """List files under ``root_uri`` whose suffix is in ``extensions``, sorted by path.

    Remote stores are listed with their paginated listing calls (one ``find``, retried as a
    whole on transient errors), not a request per object.
    """
    suffixes = tuple(e.lower() for e in extensions)
    listed: list[ListedFile] = []
    if is_local(root_uri):
        root = local_path(root_uri)
        if not os.path.isdir(root):
            raise storage.StorageError(f"source {root_uri!r} is not a folder; give the folder that "
                               "holds the images")
        for full, size, mtime, identity in _walk_local(root, follow_symlinks):
            if full.lower().endswith(suffixes):
                listed.append(ListedFile(full, os.path.relpath(full, root).replace(os.sep, "/"),
                                         size, str(mtime), identity))
    else:
        fs, root = storage.filesystem(root_uri)
        root = root.rstrip("/")
        fs.invalidate_cache(root)
        started = time.perf_counter()
        found = storage.retrying("list", root_uri, lambda: fs.find(root, detail=True))
        elapsed = time.perf_counter() - started
        logger.info("listed %d objects under %s in %.2f s (%.0f objects/s)", len(found),
                    redact(root_uri), elapsed, len(found) / max(elapsed, 1e-9))
        for path, info in sorted(found.items()):
            if info.get("type") == "directory" or not path.lower().endswith(suffixes):
                continue
            relative = path[len(root):].lstrip("/")
            listed.append(ListedFile(unstrip(fs, path, root_uri), relative,
                                     int(info.get("size") or 0), _remote_version(info)))
    listed.sort(key=lambda f: f.relative)
    return listed
