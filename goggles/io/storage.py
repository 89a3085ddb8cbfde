"""All storage I/O: fsspec URIs (local paths, file://, memory://, gs://, s3://), atomic writes,
retries, bounded concurrent reads, Parquet, tensors and JSON.

No other module opens a file.

* **Atomic outputs.** Every writer writes a hidden temporary name beside the target
  (``.NAME.tmp-<random>``; a local file straight from its arrays, an object from bytes built in
  memory) and then commits: ``os.replace`` locally, a server-side copy onto the name and a
  delete of the temporary on object stores (which have no rename). A writer killed at any point
  leaves either the complete artifact or none under its name. A folder artifact is complete
  once the stage that writes it has finished: the stage records of :mod:`goggles.io.resume` (in
  process) and Kubeflow (on a cluster) say so.
* **Retries.** Transient errors (5xx, throttling, resets, timeouts) are retried with backoff
  (:mod:`goggles.io.retries`); a permanent one (missing object, no permission) raises
  :class:`StorageError` at once, naming the URI and the likely fix.
* **Scale.** Remote folders are listed with the store's paginated listing
  (:mod:`goggles.io.listing`), never a request per object; :func:`goggles.io.transfer.read_many`
  reads with a bounded number of requests in flight and reports progress.

Credentials and endpoints come from the environment of the process, never from URIs or pipeline
parameters: for GCS, application default credentials or ``GOOGLE_APPLICATION_CREDENTIALS``
(``STORAGE_EMULATOR_HOST`` points gcsfs at another server); for S3, the AWS variables
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_PROFILE``, ``AWS_DEFAULT_REGION``) and,
for S3-compatible servers, ``AWS_ENDPOINT_URL_S3`` (or fsspec's ``FSSPEC_S3_ENDPOINT_URL``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import re
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

# gcsfs's experimental zonal/HNS layer talks gRPC to the Storage Control API, which emulators
# and some networks lack; plain JSON-API gcsfs is what goggles needs. Must precede the import
# of gcsfs (fsspec imports it lazily, on the first gs:// URI). Set it to "true" to opt in.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import fsspec  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from goggles.io import npy, retries  # noqa: E402
from goggles.io.uris import is_local, join, local_path, protocol_of, redact, refusal  # noqa: E402,E501

logger = logging.getLogger(__name__)

T = TypeVar("T")

TEMPORARY_TAG = ".tmp-"
_TEMPORARY = re.compile(r"^\..+\.tmp-[0-9a-f]{12}$")
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


# -- URIs ---------------------------------------------------------------------------------------

__all__ = ["is_local", "join", "local_path", "protocol_of", "redact"]  # from goggles.io.uris


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return the filesystem for ``uri`` and the path inside it.

    Only the protocols of :func:`goggles.io.uris.allowed_protocols` are opened, and a URI that
    chains filesystems (``::``), carries credentials (``s3://KEY:SECRET@bucket``) or a query
    string (a signed URL) is refused (:func:`goggles.io.uris.refusal`): before any request
    leaves the process.
    """
    reason = refusal(uri)
    if reason is not None:
        raise StorageError(f"{redact(uri)!r}: {reason}")
    protocol = protocol_of(uri)
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


def retrying(action: str, uri: str, call: Callable[[], T]) -> T:
    """``call()``, retried on transient errors; a final failure raises :class:`StorageError`."""
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
        retrying("look up", uri, lambda: fs.info(path))
    except MissingObjectError:
        return False
    return True


def read_bytes(uri: str) -> bytes:
    """Read a whole object. A missing object raises :class:`MissingObjectError` naming it."""
    if is_local(uri):
        def read() -> bytes:
            with open(local_path(uri), "rb") as handle:
                return handle.read()

        return retrying("read", uri, read)
    fs, path = filesystem(uri)
    return bytes(retrying("read", uri, lambda: fs.cat_file(path)))


def temporary_name(path: str) -> str:
    """A hidden sibling of ``path`` that no reader of ``path`` would take for it."""
    parent, name = posixpath.split(path) if "/" in path else ("", path)
    hidden = f".{name}{TEMPORARY_TAG}{uuid.uuid4().hex[:12]}"
    return f"{parent}/{hidden}" if parent else hidden


def is_temporary(name: str) -> bool:
    """Whether ``name`` (a path or its last part) is a writer's temporary."""
    return bool(_TEMPORARY.match(posixpath.basename(name)))


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` atomically: a temporary object, then a commit onto the name."""
    if is_local(uri):
        _write_local(uri, lambda handle: handle.write(data))
        return
    fs, path = filesystem(uri)
    if protocol_of(uri) == "memory":
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
    temporary = temporary_name(path)
    retrying("write", uri, lambda: fs.pipe_file(temporary, data))
    _commit(fs, temporary, path, uri)


def _write_local(uri: str, fill: Callable[[Any], object]) -> None:
    """A local file written atomically by ``fill(handle)`` straight into its temporary (no copy
    of the bytes in memory), then committed."""
    fs, _ = filesystem(uri)
    path = local_path(uri)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    temporary = os.path.join(parent, os.path.basename(temporary_name(path)))
    try:
        with open(temporary, "wb") as handle:
            fill(handle)
            handle.flush()
            os.fsync(handle.fileno())
        _commit(fs, temporary, path, uri)
    except PermissionError as error:
        raise _give_up("write", uri)(error, 1) from error
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)


def _commit(fs: fsspec.AbstractFileSystem, temporary: str, path: str, uri: str) -> None:
    """Put the finished ``temporary`` under its final ``path`` (the only step a reader sees)."""
    if is_local(uri):
        os.replace(temporary, path)
        return
    # Object stores have no rename: a server-side copy is atomic for the reader, then the
    # temporary goes. A crash between the two leaves a complete artifact and a hidden leftover.
    retrying("commit", uri, lambda: fs.cp_file(temporary, path))
    try:
        retrying("clean up after", uri, lambda: fs.rm_file(temporary))
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


def write_npy(array: np.ndarray, uri: str, *, dtype: Any = None) -> None:
    """``array`` as a ``.npy`` file at ``uri``, stored as ``dtype`` (default its own), converted a
    block of rows at a time (:mod:`goggles.io.npy`); a local file is written straight to."""
    array = np.asarray(array)
    stored = array.dtype if dtype is None else np.dtype(dtype)
    if is_local(uri):
        _write_local(uri, lambda handle: npy.write_array(handle, array, stored))
        return
    buffer = io.BytesIO()
    npy.write_array(buffer, array, stored)
    write_bytes(uri, buffer.getvalue())


def read_npy(uri: str, *, dtype: Any = None) -> np.ndarray:
    """The array of the ``.npy`` file at ``uri``, as ``dtype`` (default as stored); a local file
    is read straight into the array (:mod:`goggles.io.npy`: one copy in memory, not two)."""
    if not is_local(uri):
        array = np.load(io.BytesIO(read_bytes(uri)), allow_pickle=False)
        return array if dtype is None else array.astype(dtype, copy=False)
    handle = retrying("read", uri, lambda: open(local_path(uri), "rb"))
    with handle:
        if dtype is None:
            return np.load(handle, allow_pickle=False)  # type: ignore[no-any-return]
        try:
            return npy.read_array(handle, dtype)
        except EOFError as error:
            raise StorageError(f"{uri} {error}: the file is truncated; rerun the stage that "
                               "wrote it") from None


def write_json(obj: Any, uri: str) -> None:
    write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_text(text: str, uri: str) -> None:
    write_bytes(uri, text.encode())


# -- folders --------------------------------------------------------------------------------------

def fingerprint(uri: str) -> str:
    """A digest of the bytes of object ``uri``, for resume keys: the sha256 of a local file (read
    in 1 MiB pieces), the store's own checksum of a remote one (GCS's md5 or crc32c, S3's ETag,
    with its size and generation), else the sha256 of its bytes."""
    if is_local(uri):
        digest = hashlib.sha256()

        def read() -> None:
            with open(local_path(uri), "rb") as handle:
                for piece in iter(lambda: handle.read(2**20), b""):
                    digest.update(piece)

        retrying("read", uri, read)
        return f"sha256:{digest.hexdigest()}"
    fs, path = filesystem(uri)
    fs.invalidate_cache(path)
    info = retrying("look up", uri, lambda: fs.info(path))
    stored = [f"{key}:{info[key]}" for key in ("md5Hash", "crc32c", "ETag", "etag", "generation",
                                               "size") if info.get(key)]
    if any(not s.startswith(("generation", "size")) for s in stored):
        return ";".join(stored)
    return "sha256:" + hashlib.sha256(read_bytes(uri)).hexdigest()


def size(uri: str) -> int:
    """The size of the object ``uri`` in bytes (a missing one raises
    :class:`MissingObjectError`)."""
    if is_local(uri):
        return retrying("look up", uri, lambda: os.path.getsize(local_path(uri)))
    fs, path = filesystem(uri)
    return int(retrying("look up", uri, lambda: fs.info(path)).get("size") or 0)


def is_file(uri: str) -> bool:
    """Whether ``uri`` names a file (not a folder), asking the store."""
    if is_local(uri):
        return os.path.isfile(local_path(uri))
    fs, path = filesystem(uri)
    fs.invalidate_cache(path)
    try:
        info = retrying("look up", uri, lambda: fs.info(path))
    except MissingObjectError:
        return False
    return info.get("type") == "file"


def list_dir(uri: str) -> list[str]:
    """The names of the entries directly under the folder ``uri``, sorted (none: ``[]``)."""
    if is_local(uri):
        path = local_path(uri)
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    fs, path = filesystem(uri)
    fs.invalidate_cache(path)
    try:
        found = retrying("list", uri, lambda: fs.ls(path, detail=False))
    except MissingObjectError:
        return []
    return sorted({str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in found} - {""})


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
        retrying("delete", uri, lambda: fs.rm_file(path))
    except MissingObjectError:
        pass
