"""Many whole objects at once: read with bounded requests and bytes in flight, copied and linked
atomically for exports that lay images out anew.

* :func:`copy_object` copies one object: a server-side copy when both URIs are in one remote
  store (no byte passes through this process), else :func:`goggles.io.storage.read_bytes` and
  :func:`goggles.io.storage.write_bytes` (a temporary name, then a commit).
* :func:`link` makes a local symlink under a temporary name and renames it onto its place, so a
  reader never sees a half-made link. The link is relative (``../../images/a.jpg``), so a tree
  moved together with its images, or seen through another mount point, still resolves.
* :func:`read_many` reads many objects and :func:`copy_or_link_many` copies or links many, each
  with a bounded number in flight (:func:`default_concurrency` when a remote store is involved).
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
    order as they are done; at most :func:`default_concurrency` in flight when
    a remote store is involved, one at a time locally. The first failure raises."""
    remote = any(not (is_local(s) and is_local(d)) for s, d in pairs)
    workers = default_concurrency() if remote else 1

    def one(pair: tuple[str, str]) -> tuple[str, str]:
        if symlink:
            link(*pair)
        else:
            copy_object(*pair)
        return pair

    yield from concurrency.map_bounded(one, pairs, max_concurrency=workers, desc=desc,
                                       unit="img", total=len(pairs))


def _whole_number(name: str, default: int, example: str) -> int:
    value = os.environ.get(name, str(default))
    try:
        return max(1, int(value))
    except ValueError as error:
        raise ValueError(f"{name}={value!r} is not a whole number; set it to {example}") from error


def default_concurrency() -> int:
    """Requests in flight for :func:`read_many` on remote stores (``GOGGLES_STORAGE_CONCURRENCY``,
    default 16)."""
    return _whole_number("GOGGLES_STORAGE_CONCURRENCY", 16, "the number of requests in flight, "
                         "e.g. 16")


def default_bytes_in_flight() -> int:
    """Bytes :func:`read_many` holds in flight at most (``GOGGLES_STORAGE_MAX_BYTES_IN_FLIGHT``,
    default 256 MiB: a sixteenth of the ingest pod's memory limit)."""
    return _whole_number("GOGGLES_STORAGE_MAX_BYTES_IN_FLIGHT", 256 * 2**20,
                         "a number of bytes, e.g. 268435456")


def read_many(uris: Sequence[str], *, max_concurrency: int | None = None,
              desc: str | None = None, sizes: Sequence[int] | None = None,
              max_bytes_in_flight: int | None = None,
              ) -> Iterator[tuple[str, bytes | storage.StorageError]]:
    """Read ``uris`` with at most ``max_concurrency`` requests in flight (default: 1 for local
    files, :func:`default_concurrency` for remote stores) and, given their listed ``sizes``, at
    most ``max_bytes_in_flight`` bytes (default :func:`default_bytes_in_flight`; a larger object
    is read alone), yielding ``(uri, bytes)`` in order, or ``(uri, StorageError)`` for an object
    that could not be read (each read is retried first)."""
    if max_concurrency is None:
        remote = any(not is_local(u) for u in uris)
        max_concurrency = default_concurrency() if remote else 1
    size_of = dict(zip(uris, sizes, strict=True)) if sizes is not None else {}

    def read(uri: str) -> tuple[str, bytes | storage.StorageError]:
        try:
            return uri, storage.read_bytes(uri)
        except storage.StorageError as error:
            return uri, error

    yield from concurrency.map_bounded(
        read, uris, max_concurrency=max_concurrency, desc=desc, unit="obj", total=len(uris),
        cost=lambda uri: max(0, size_of.get(uri, 0)),
        max_cost=max_bytes_in_flight or default_bytes_in_flight())
