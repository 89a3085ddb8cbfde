"""Copying and linking whole objects, atomically, for exports that lay images out anew.

* :func:`copy_object` copies one object: a server-side copy when both URIs are in one remote
  store (no byte passes through this process), else :func:`goggles.io.storage.read_bytes` and
  :func:`goggles.io.storage.write_bytes` (a temporary name, then a commit).
* :func:`link` makes a local symlink under a temporary name and renames it onto its place, so a
  reader never sees a half-made link. The link is relative (``../../images/a.jpg``), so a tree
  moved together with its images, or seen through another mount point, still resolves.
* :func:`copy_or_link_many` does many of either with a bounded number in flight
  (:func:`goggles.io.storage.default_concurrency` when a remote store is involved).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from goggles.io import concurrency, storage
from goggles.io.uris import is_local, local_path, redact


def copy_object(source: str, dest: str) -> None:
    """Copy the object ``source`` to ``dest`` (any two stores); retried, atomic for readers."""
    if not (is_local(source) or is_local(dest)):
        source_fs, source_path = storage.filesystem(source)
        dest_fs, dest_path = storage.filesystem(dest)
        if source_fs is dest_fs:  # one store: a server-side copy is atomic by itself
            storage.retrying("copy to", dest, lambda: dest_fs.cp_file(source_path, dest_path))
            return
    storage.write_bytes(dest, storage.read_bytes(source))


def link(target: str, dest: str) -> None:
    """Make the local path ``dest`` a symlink to the local file ``target``, relative to
    ``dest``'s folder, replacing an existing link of that name atomically."""
    if not (is_local(target) and is_local(dest)):
        raise ValueError(f"links are local only: cannot link {redact(dest)!r} to "
                         f"{redact(target)!r}; copy instead")
    source = os.path.abspath(local_path(target))
    if not os.path.isfile(source):
        raise storage.MissingObjectError(f"{source!r} does not exist (or is not a file); a "
                                         "link to it would dangle")
    path = local_path(dest)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    temporary = os.path.join(parent, os.path.basename(storage.temporary_name(path)))
    try:
        os.symlink(os.path.relpath(source, os.path.abspath(parent or os.curdir)), temporary)
        os.replace(temporary, path)
    except OSError as error:
        raise storage.StorageError(f"cannot link {path!r} to {local_path(target)!r}: "
                                   f"{error.strerror or error}") from error
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)


def copy_or_link_many(pairs: Sequence[tuple[str, str]], *, symlink: bool,
                      desc: str | None = None) -> Iterator[tuple[str, str]]:
    """Copy (or, with ``symlink``, link) each ``(source, dest)`` pair, yielding the pairs in
    order as they are done; at most :func:`goggles.io.storage.default_concurrency` in flight when
    a remote store is involved, one at a time locally. The first failure raises."""
    remote = any(not (is_local(s) and is_local(d)) for s, d in pairs)
    workers = storage.default_concurrency() if remote else 1

    def one(pair: tuple[str, str]) -> tuple[str, str]:
        if symlink:
            link(*pair)
        else:
            copy_object(*pair)
        return pair

    yield from concurrency.map_bounded(one, pairs, max_concurrency=workers, desc=desc,
                                       unit="img", total=len(pairs))
