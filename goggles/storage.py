"""All storage I/O: fsspec URIs (local paths, file://, memory://, gs://, s3://), atomic writes,
Parquet, tensors and JSON.

No other module opens a file. Every writer builds its bytes in memory and commits them with one
write to a temporary name followed by a move, so a reader never sees a half-written artifact.
"""

from __future__ import annotations

import io
import json
import logging
import os
import posixpath
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)


class StorageError(OSError):
    """A URI could not be read or written; the message names it and the likely fix."""


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return the filesystem for ``uri`` and the path inside it.

    Credentials come from the environment (application default credentials, AWS variables),
    never from parameters.
    """
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as error:
        protocol = uri.split("://", 1)[0] if "://" in uri else "file"
        extra = {"gs": "gcs", "gcs": "gcs", "s3": "s3"}.get(protocol)
        hint = f"; install it with `pip install 'goggles[{extra}]'`" if extra else ""
        raise StorageError(f"cannot open {uri!r}: no filesystem for {protocol!r}{hint}") from error
    return fs, path


def is_local(uri: str) -> bool:
    """True for plain paths and file:// URIs."""
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    """The OS path of a local URI."""
    return uri[len("file://"):] if uri.startswith("file://") else uri


def join(base: str, *parts: str) -> str:
    """Join URI parts with ``/`` (local paths use the OS separator)."""
    if is_local(base):
        return os.path.join(base, *parts)
    return posixpath.join(base, *parts)


def protocol_of(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def unstrip(fs: fsspec.AbstractFileSystem, path: str, like: str) -> str:
    """Turn a path inside ``fs`` back into a URI of the same form as ``like``."""
    if is_local(like):
        return path
    return f"{protocol_of(like)}://{path.lstrip('/') if protocol_of(like) != 'memory' else path}"


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return bool(fs.exists(path))


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.makedirs(path, exist_ok=True)


def read_bytes(uri: str) -> bytes:
    """Read a whole object. A missing object raises :class:`StorageError` naming it."""
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "rb") as handle:
            return bytes(handle.read())
    except FileNotFoundError as error:
        raise StorageError(f"{uri!r} does not exist; check the URI and that the previous "
                           "stage wrote it") from error
    except PermissionError as error:
        raise StorageError(f"no permission to read {uri!r}; check the credentials in the "
                           "environment (GOOGLE_APPLICATION_CREDENTIALS / AWS_*)") from error


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` atomically: a temporary object, then a move onto the name."""
    fs, path = filesystem(uri)
    parent = posixpath.dirname(path) if not is_local(uri) else os.path.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    temporary = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        if is_local(uri):
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        else:
            with fs.open(temporary, "wb") as handle:
                handle.write(data)
            fs.mv(temporary, path)
    except PermissionError as error:
        raise StorageError(f"no permission to write {uri!r}; check the credentials in the "
                           "environment (GOOGLE_APPLICATION_CREDENTIALS / AWS_*)") from error
    finally:
        try:
            if fs.exists(temporary):
                fs.rm(temporary)
        except OSError:  # pragma: no cover - best effort cleanup
            pass


def write_parquet(table: pa.Table, uri: str) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    write_bytes(uri, buffer.getvalue())


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(io.BytesIO(read_bytes(uri)), columns=columns)


def write_npy(array: np.ndarray, uri: str) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    write_bytes(uri, buffer.getvalue())


def read_npy(uri: str) -> np.ndarray:
    return np.load(io.BytesIO(read_bytes(uri)), allow_pickle=False)  # type: ignore[no-any-return]


def write_json(obj: Any, uri: str) -> None:
    write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_text(text: str, uri: str) -> None:
    write_bytes(uri, text.encode())


@dataclass(frozen=True)
class ListedFile:
    uri: str
    relative: str
    size: int


def _walk_local(root: str) -> Iterator[tuple[str, int]]:
    """Files under ``root``, following symlinked folders but entering each real folder once, so a
    symlink loop cannot run forever. Paths stay under ``root`` (the link's path, not its target)."""
    visited: set[str] = set()
    for folder, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited:
            logger.warning("skipping %s: a symlink loop leads back to %s", folder, real)
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(folder, name)
            try:
                size = os.path.getsize(full)
            except OSError:
                size = -1  # dangling link or vanished file: ingest records the reason
            yield full, size


def list_files(root_uri: str, extensions: tuple[str, ...]) -> list[ListedFile]:
    """List files under ``root_uri`` whose suffix is in ``extensions``, sorted by path.

    Remote stores are listed with their paginated listing calls (one ``find``), not a request
    per object.
    """
    suffixes = tuple(e.lower() for e in extensions)
    listed: list[ListedFile] = []
    if is_local(root_uri):
        root = local_path(root_uri)
        if not os.path.isdir(root):
            raise StorageError(f"source {root_uri!r} is not a folder; give the folder that "
                               "holds the images")
        for full, size in _walk_local(root):
            if full.lower().endswith(suffixes):
                listed.append(ListedFile(full, os.path.relpath(full, root).replace(os.sep, "/"),
                                         size))
    else:
        fs, root = filesystem(root_uri)
        root = root.rstrip("/")
        try:
            found = fs.find(root, detail=True)
        except FileNotFoundError as error:
            raise StorageError(f"source {root_uri!r} does not exist") from error
        for path, info in sorted(found.items()):
            if info.get("type") == "directory" or not path.lower().endswith(suffixes):
                continue
            relative = path[len(root):].lstrip("/")
            listed.append(ListedFile(unstrip(fs, path, root_uri), relative,
                                     int(info.get("size") or 0)))
    listed.sort(key=lambda f: f.relative)
    return listed
