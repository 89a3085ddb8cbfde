"""All storage I/O: fsspec URIs (local paths, file://, memory://, gs://, s3://), atomic writes,
retries, bounded concurrent reads, Parquet, tensors and JSON.

No other module opens a file.

* **Atomic outputs.** Every writer builds its bytes in memory, writes them to a hidden temporary
  name beside the target (``.NAME.tmp-<random>``) and then commits: ``os.replace`` locally, a
  server-side copy onto the name and a delete of the temporary on object stores (which have no
  rename). A writer killed at any point leaves either the complete artifact or none under its
  name. Folder artifacts are complete when their ``_SUCCESS`` marker (written last, listing each
  file and its size) is there: see :mod:`goggles.completion`.
* **Retries.** Transient errors (5xx, throttling, resets, timeouts) are retried with backoff
  (:mod:`goggles.retries`); a permanent one (missing object, no permission) raises
  :class:`StorageError` at once, naming the URI and the likely fix.
* **Scale.** Remote folders are listed with the store's paginated listing (one ``find``: 1,000
  objects a request), never a request per object; :func:`read_many` reads with a bounded number
  of requests in flight and reports progress.

Credentials and endpoints come from the environment of the process, never from URIs or pipeline
parameters: for GCS, application default credentials or ``GOOGLE_APPLICATION_CREDENTIALS``
(``STORAGE_EMULATOR_HOST`` points gcsfs at another server); for S3, the AWS variables
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_PROFILE``, ``AWS_DEFAULT_REGION``) and,
for S3-compatible servers, ``AWS_ENDPOINT_URL_S3`` (or fsspec's ``FSSPEC_S3_ENDPOINT_URL``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import posixpath
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

# gcsfs's experimental zonal/HNS layer talks gRPC to the Storage Control API, which emulators
# and some networks lack; plain JSON-API gcsfs is what goggles needs. Must precede the import
# of gcsfs (fsspec imports it lazily, on the first gs:// URI). Set it to "true" to opt in.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import fsspec  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from goggles import concurrency, retries  # noqa: E402

logger = logging.getLogger(__name__)

T = TypeVar("T")

TEMPORARY_TAG = ".tmp-"
_TEMPORARY = re.compile(r"^\..+\.tmp-[0-9a-f]{12}$")
_REMOTE_CREDENTIAL_FREE = ("gs", "gcs", "s3", "s3a", "http", "https", "az", "abfs", "adl")
_CREDENTIAL_HINT = ("check the credentials in the environment: GCS uses application default "
                    "credentials or GOOGLE_APPLICATION_CREDENTIALS; S3 uses AWS_ACCESS_KEY_ID/"
                    "AWS_SECRET_ACCESS_KEY or AWS_PROFILE")


class StorageError(OSError):
    """A URI could not be read or written; the message names it and the likely fix."""


class MissingObjectError(StorageError, FileNotFoundError):
    """The URI names nothing in the store."""


class AccessDeniedError(StorageError, PermissionError):
    """The store refused the credentials of this process."""


_policy = retries.RetryPolicy.from_environment()


def set_retry_policy(policy: retries.RetryPolicy) -> retries.RetryPolicy:
    """Use ``policy`` for every later storage call; returns the previous one."""
    global _policy
    previous, _policy = _policy, policy
    return previous


def default_concurrency() -> int:
    """Requests in flight for :func:`read_many` on remote stores (``GOGGLES_STORAGE_CONCURRENCY``,
    default 16)."""
    value = os.environ.get("GOGGLES_STORAGE_CONCURRENCY", "16")
    try:
        return max(1, int(value))
    except ValueError as error:
        raise ValueError(f"GOGGLES_STORAGE_CONCURRENCY={value!r} is not a whole number; set it "
                         "to the number of requests in flight, e.g. 16") from error


# -- URIs -----------------------------------------------------------------------------------------

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


def redact(uri: str) -> str:
    """``uri`` without any ``user:secret@`` part or query string, for messages and logs."""
    if "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    netloc, slash, path = rest.partition("/")
    return f"{scheme}://{netloc.rpartition('@')[2]}{slash}{path.split('?', 1)[0]}"


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return the filesystem for ``uri`` and the path inside it.

    Credentials come from the environment (see the module docstring); a URI that carries them
    (``s3://KEY:SECRET@bucket``) is refused, because URIs end up in pipeline parameters, logs
    and artifacts.
    """
    protocol = protocol_of(uri)
    if protocol in _REMOTE_CREDENTIAL_FREE and "@" in uri.split("://", 1)[1].split("/", 1)[0]:
        raise StorageError(f"{redact(uri)!r}: credentials in a URI are not accepted (URIs are "
                           "stored in parameters, logs and artifacts); remove them from the URI "
                           "and provide them through the environment: GCS application default "
                           "credentials or GOOGLE_APPLICATION_CREDENTIALS; AWS_ACCESS_KEY_ID/"
                           "AWS_SECRET_ACCESS_KEY or AWS_PROFILE")
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as error:
        extra = {"gs": "gcs", "gcs": "gcs", "s3": "s3", "s3a": "s3"}.get(protocol)
        hint = f"; install it with `pip install 'goggles[{extra}]'`" if extra else ""
        raise StorageError(f"cannot open {redact(uri)!r}: no filesystem for {protocol!r}"
                           f"{hint}") from error
    return fs, path


def _give_up(action: str, uri: str) -> Callable[[BaseException, int], BaseException]:
    """The error :func:`retries.call_with_retries` raises when ``action`` on ``uri`` fails."""
    shown = redact(uri)

    def build(error: BaseException, attempts: int) -> BaseException:
        if isinstance(error, StorageError):
            return error
        if any(isinstance(e, FileNotFoundError) for e in retries.causes(error)):
            return MissingObjectError(f"{shown!r} does not exist; check the URI (bucket and "
                                      "path) and, for a stage input, that the stage before "
                                      "wrote it")
        if retries.is_permission_error(error):
            return AccessDeniedError(f"no permission to {action} {shown!r}; give the identity "
                                     "running goggles access to the bucket (read for inputs, "
                                     f"write for outputs) and {_CREDENTIAL_HINT}")
        if attempts > 1 and retries.is_transient(error):
            return StorageError(f"cannot {action} {shown!r}: still failing after {attempts} "
                                f"attempts ({type(error).__name__}: {error}); the store is "
                                "unreachable or overloaded — check the endpoint and network, "
                                "or raise GOGGLES_STORAGE_MAX_ATTEMPTS, then rerun (complete "
                                "outputs are reused)")
        if isinstance(error, (OSError, ValueError)) or retries.http_status(error) is not None:
            return StorageError(f"cannot {action} {shown!r}: {type(error).__name__}: {error}")
        return error  # a programming error: keep its own type and traceback

    return build


def _retrying(action: str, uri: str, call: Callable[[], T]) -> T:
    return retries.call_with_retries(call, describe=f"{action} {redact(uri)}", policy=_policy,
                                     give_up=_give_up(action, uri))


# -- objects --------------------------------------------------------------------------------------

def exists(uri: str) -> bool:
    """Whether ``uri`` names a file or folder (asks the store, not a cached listing)."""
    if is_local(uri):
        return os.path.exists(local_path(uri))
    fs, path = filesystem(uri)
    fs.invalidate_cache(path)
    try:
        _retrying("look up", uri, lambda: fs.info(path))
    except MissingObjectError:
        return False
    return True


def read_bytes(uri: str) -> bytes:
    """Read a whole object. A missing object raises :class:`MissingObjectError` naming it."""
    if is_local(uri):
        def read() -> bytes:
            with open(local_path(uri), "rb") as handle:
                return handle.read()

        return _retrying("read", uri, read)
    fs, path = filesystem(uri)
    return bytes(_retrying("read", uri, lambda: fs.cat_file(path)))


def temporary_name(path: str) -> str:
    """A hidden sibling of ``path`` that no reader of ``path`` would take for it."""
    parent, name = posixpath.split(path) if "/" in path else ("", path)
    hidden = f".{name}{TEMPORARY_TAG}{uuid.uuid4().hex[:12]}"
    return f"{parent}/{hidden}" if parent else hidden


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` atomically: a temporary object, then a commit onto the name."""
    fs, path = filesystem(uri)
    if is_local(uri):
        path = local_path(uri)
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        temporary = os.path.join(parent, os.path.basename(temporary_name(path)))
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            _commit(fs, temporary, path, uri)
        except PermissionError as error:
            raise _give_up("write", uri)(error, 1) from error
        finally:
            if os.path.lexists(temporary):
                os.unlink(temporary)
        return
    if protocol_of(uri) == "memory":
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
    temporary = temporary_name(path)
    _retrying("write", uri, lambda: fs.pipe_file(temporary, data))
    _commit(fs, temporary, path, uri)


def _commit(fs: fsspec.AbstractFileSystem, temporary: str, path: str, uri: str) -> None:
    """Put the finished ``temporary`` under its final ``path`` (the only step a reader sees)."""
    if is_local(uri):
        os.replace(temporary, path)
        return
    # Object stores have no rename: a server-side copy is atomic for the reader, then the
    # temporary goes. A crash between the two leaves a complete artifact and a hidden leftover.
    _retrying("commit", uri, lambda: fs.cp_file(temporary, path))
    try:
        _retrying("clean up after", uri, lambda: fs.rm_file(temporary))
    except MissingObjectError:
        pass  # an earlier attempt deleted it and the reply was lost
    except StorageError as error:
        logger.warning("left a temporary object behind (harmless, hidden): %s", error)


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
    if is_local(uri):  # from the file straight into the array: one copy in memory, not two
        handle = _retrying("read", uri, lambda: open(local_path(uri), "rb"))
        with handle:
            return np.load(handle, allow_pickle=False)  # type: ignore[no-any-return]
    return np.load(io.BytesIO(read_bytes(uri)), allow_pickle=False)  # type: ignore[no-any-return]


def write_json(obj: Any, uri: str) -> None:
    write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_text(text: str, uri: str) -> None:
    write_bytes(uri, text.encode())


# -- folders --------------------------------------------------------------------------------------

def _list_all(uri: str) -> dict[str, int]:
    """Relative name -> size of every file under folder ``uri`` (none if it does not exist)."""
    if is_local(uri):
        root = local_path(uri)
        if not os.path.isdir(root):
            return {}
        return {os.path.relpath(full, root).replace(os.sep, "/"): size
                for full, size in _walk_local(root)}
    fs, root = filesystem(uri)
    root = root.rstrip("/")
    fs.invalidate_cache(root)
    try:
        listing = _retrying("list", uri, lambda: fs.find(root, detail=True))
    except MissingObjectError:
        return {}
    return {path[len(root):].lstrip("/"): int(info.get("size") or 0)
            for path, info in listing.items() if info.get("type") != "directory"}


def is_temporary(name: str) -> bool:
    """Whether ``name`` (a path or its last part) is a writer's temporary."""
    return bool(_TEMPORARY.match(posixpath.basename(name)))


def list_folder(uri: str) -> dict[str, int]:
    """Relative name -> size of the files under folder ``uri``, without temporaries (one
    paginated listing on object stores)."""
    return {name: size for name, size in _list_all(uri).items() if not is_temporary(name)}


def is_file(uri: str) -> bool:
    """Whether ``uri`` names a file (not a folder), asking the store."""
    if is_local(uri):
        return os.path.isfile(local_path(uri))
    fs, path = filesystem(uri)
    fs.invalidate_cache(path)
    try:
        info = _retrying("look up", uri, lambda: fs.info(path))
    except MissingObjectError:
        return False
    return info.get("type") == "file"


def remove(uri: str) -> None:
    """Delete one object (a missing one is not an error)."""
    if is_local(uri):
        try:
            os.unlink(local_path(uri))
        except FileNotFoundError:
            pass
        return
    fs, path = filesystem(uri)
    try:
        _retrying("delete", uri, lambda: fs.rm_file(path))
    except MissingObjectError:
        pass


def remove_temporaries(uri: str) -> int:
    """Delete the hidden temporaries that killed writers left under folder ``uri``; returns how
    many. Only for a folder no live writer is using."""
    leftovers = [name for name in _list_all(uri) if is_temporary(name)]
    for name in leftovers:
        remove(join(uri, *name.split("/")))
    if leftovers:
        logger.info("removed %d temporaries left by interrupted writers under %s",
                    len(leftovers), redact(uri))
    return len(leftovers)


# -- many objects ---------------------------------------------------------------------------------

def read_many(uris: Sequence[str], *, max_concurrency: int | None = None,
              desc: str | None = None) -> Iterator[tuple[str, bytes | StorageError]]:
    """Read ``uris`` with at most ``max_concurrency`` requests in flight (default: 1 for local
    files, :func:`default_concurrency` for remote stores), yielding ``(uri, bytes)`` in order, or
    ``(uri, StorageError)`` for an object that could not be read (each read is retried first)."""
    if max_concurrency is None:
        remote = any(not is_local(u) for u in uris)
        max_concurrency = default_concurrency() if remote else 1

    def read(uri: str) -> tuple[str, bytes | StorageError]:
        try:
            return uri, read_bytes(uri)
        except StorageError as error:
            return uri, error

    yield from concurrency.map_bounded(read, uris, max_concurrency=max_concurrency, desc=desc,
                                       unit="obj", total=len(uris))


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

    Remote stores are listed with their paginated listing calls (one ``find``, retried as a
    whole on transient errors), not a request per object.
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
        fs.invalidate_cache(root)
        started = time.perf_counter()
        found = _retrying("list", root_uri, lambda: fs.find(root, detail=True))
        elapsed = time.perf_counter() - started
        logger.info("listed %d objects under %s in %.2f s (%.0f objects/s)", len(found),
                    redact(root_uri), elapsed, len(found) / max(elapsed, 1e-9))
        for path, info in sorted(found.items()):
            if info.get("type") == "directory" or not path.lower().endswith(suffixes):
                continue
            relative = path[len(root):].lstrip("/")
            listed.append(ListedFile(unstrip(fs, path, root_uri), relative,
                                     int(info.get("size") or 0)))
    listed.sort(key=lambda f: f.relative)
    return listed
