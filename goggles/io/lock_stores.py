"""The stores under :mod:`goggles.io.lock`: for each kind of URI, an exclusive create, a
versioned read and a delete conditional on that version of one object (the lock). The lock's
docstring says how each store does it and what the test servers were shown to honour."""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import threading
from typing import Any, Literal

from goggles.io import retries, storage
from goggles.io.uris import is_local, local_path, protocol_of, redact

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

_PROTOCOLS = {"file": "file", "memory": "memory", "gs": "gs", "gcs": "gs", "s3": "s3", "s3a": "s3"}
_MEMORY_GUARD = threading.Lock()

Removal = Literal["deleted", "gone", "changed"]


class LockUnsupported(storage.StorageError):
    """The output's store cannot create an object exclusively, so it cannot be locked."""


class _Store:
    """Exclusive create, versioned read and conditional delete of one object."""

    def __init__(self, uri: str):
        self.uri = uri

    def create(self, body: bytes) -> bool:
        """Create the object with ``body``; False when it exists."""
        raise NotImplementedError

    def read(self) -> tuple[bytes, Any] | None:
        """The body and a version of it, or None when there is no object."""
        raise NotImplementedError

    def delete(self, version: Any) -> Removal:
        """Delete the object if it is still at ``version`` (as :meth:`read` gave it)."""
        raise NotImplementedError

    def check_exclusive(self, body: bytes) -> None:
        """Raise :class:`LockUnsupported` unless a second create of the existing object fails."""


def _says_exists(error: BaseException) -> bool:
    """The store refused a create because the object exists (412), or while another conditional
    create of it is in flight (S3's 409 ConditionalRequestConflict)."""
    return any(isinstance(link, FileExistsError) or retries.http_status(link) in (409, 412)
               for link in retries.causes(error))


def _says_changed(error: BaseException) -> bool:
    """A conditional delete was refused: the object is not at the version given (412; gcsfs
    turns a 412 into FileExistsError, s3fs into OSError(EINVAL) from a ClientError)."""
    return any(isinstance(link, FileExistsError) or retries.http_status(link) == 412
               for link in retries.causes(error))


class _LocalStore(_Store):
    def __init__(self, uri: str):
        super().__init__(uri)
        self.path = os.path.abspath(local_path(uri))
        self.folder = os.path.dirname(self.path)

    def create(self, body: bytes) -> bool:
        return storage.retrying("lock", self.uri, lambda: self._create(body))

    def _create(self, body: bytes) -> bool:
        os.makedirs(self.folder, exist_ok=True)
        temporary = os.path.join(self.folder,
                                 os.path.basename(storage.temporary_name(self.path)))
        with open(temporary, "wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, self.path)
            return True
        except FileExistsError:
            return False
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV,
                                   errno.EMLINK, errno.ENOSYS):
                raise
            return self._create_exclusive(body)  # a filesystem without hard links
        finally:
            os.unlink(temporary)

    def _create_exclusive(self, body: bytes) -> bool:
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        return True

    def read(self) -> tuple[bytes, Any] | None:
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        return data, data

    def delete(self, version: Any) -> Removal:
        guard = self._guard()
        try:
            current = self.read()
            if current is None:
                return "gone"
            if current[0] != version:
                return "changed"
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                return "gone"
            return "deleted"
        finally:
            if guard is not None:
                os.close(guard)  # closing releases the flock

    def _guard(self) -> int | None:
        """An exclusive flock of the folder for a read-compare-delete (every remover takes it;
        a creator needs none, as it only creates where nothing is)."""
        if fcntl is None:
            return None
        try:
            descriptor = os.open(self.folder, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except OSError:
            os.close(descriptor)
            return None
        return descriptor


class _MemoryStore(_Store):
    def __init__(self, uri: str):
        super().__init__(uri)
        self.fs, self.path = storage.filesystem(uri)

    def create(self, body: bytes) -> bool:
        with _MEMORY_GUARD:
            if self.fs.exists(self.path):
                return False
            self.fs.makedirs(posixpath.dirname(self.path), exist_ok=True)
            self.fs.pipe_file(self.path, body)
            return True

    def read(self) -> tuple[bytes, Any] | None:
        with _MEMORY_GUARD:
            try:
                data = bytes(self.fs.cat_file(self.path))
            except FileNotFoundError:
                return None
            return data, data

    def delete(self, version: Any) -> Removal:
        with _MEMORY_GUARD:
            try:
                data = bytes(self.fs.cat_file(self.path))
            except FileNotFoundError:
                return "gone"
            if data != version:
                return "changed"
            self.fs.rm_file(self.path)
            return "deleted"


class _ObjectStore(_Store):
    """gs:// and s3://: a conditional create through the client's ``mode="create"``."""

    precondition = ""

    def __init__(self, uri: str):
        super().__init__(uri)
        self.fs, self.path = storage.filesystem(uri)
        self.bucket, _, self.key = self.path.partition("/")

    def create(self, body: bytes) -> bool:
        try:
            storage.retrying("lock", self.uri,
                             lambda: self.fs.pipe_file(self.path, body, mode="create"))
        except storage.StorageError as error:
            if _says_exists(error):
                return False
            if any(retries.http_status(link) == 501 for link in retries.causes(error)):
                raise LockUnsupported(
                    f"cannot lock {redact(self.uri)!r}: the store does not implement "
                    f"conditional creates ({self.precondition}), so two runs into one output "
                    "could not be kept apart; use a store that does (GCS, AWS S3) or a local "
                    "output") from error
            raise
        finally:
            self.fs.invalidate_cache(self.path)
        return True

    def read(self) -> tuple[bytes, Any] | None:
        try:
            return storage.retrying("read", self.uri, self._read)
        except storage.MissingObjectError:
            return None

    def _read(self) -> tuple[bytes, Any]:
        raise NotImplementedError

    def delete(self, version: Any) -> Removal:
        try:
            storage.retrying("remove", self.uri, lambda: self._delete(version))
        except storage.MissingObjectError:
            return "gone"
        except storage.StorageError as error:
            if _says_changed(error):
                return "changed"
            raise
        finally:
            self.fs.invalidate_cache(self.path)
        return "deleted"

    def _delete(self, version: Any) -> None:
        raise NotImplementedError

    def check_exclusive(self, body: bytes) -> None:
        if not self.create(body):
            return
        # The store wrote over an existing object (our lock, with the same body): it ignores
        # the precondition. The caller removes the lock and refuses.
        raise LockUnsupported(
            f"cannot lock {redact(self.uri)!r}: the store accepted a second create of an "
            f"existing object, ignoring the precondition {self.precondition}, so two runs into "
            "one output could not be kept apart; use a store that honours conditional writes "
            "(GCS, AWS S3; for S3-compatible servers check their If-None-Match support) or a "
            "local output")


class _GCSStore(_ObjectStore):
    precondition = "ifGenerationMatch=0"

    def _read(self) -> tuple[bytes, Any]:
        headers, data = self.fs.call("GET", "b/{}/o/{}", self.bucket, self.key, alt="media")
        generation = headers.get("X-Goog-Generation")
        if generation is None:  # not sent: the metadata, then the body of that generation
            self.fs.invalidate_cache(self.path)
            generation = str(self.fs.info(self.path)["generation"])
            _, data = self.fs.call("GET", "b/{}/o/{}", self.bucket, self.key, alt="media",
                                   generation=generation)
        return bytes(data), generation

    def _delete(self, version: Any) -> None:
        self.fs.call("DELETE", "b/{}/o/{}", self.bucket, self.key,
                     ifGenerationMatch=str(version))


class _S3Store(_ObjectStore):
    precondition = "If-None-Match: *"

    def _read(self) -> tuple[bytes, Any]:
        import fsspec.asyn

        async def get() -> tuple[bytes, Any]:
            response = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
            body = response["Body"]
            try:
                data = await body.read()
            finally:
                body.close()
            return bytes(data), response.get("ETag")

        return fsspec.asyn.sync(self.fs.loop, get)  # type: ignore[no-any-return]

    def _delete(self, version: Any) -> None:
        self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=str(version))


def _store(uri: str) -> _Store:
    kind = "file" if is_local(uri) else _PROTOCOLS.get(protocol_of(uri), "")
    stores: dict[str, type[_Store]] = {"file": _LocalStore, "memory": _MemoryStore,
                                       "gs": _GCSStore, "s3": _S3Store}
    if kind not in stores:
        raise LockUnsupported(
            f"cannot lock {redact(uri)!r}: goggles locks outputs on local paths, memory://, "
            f"gs:// and s3:// only, not {protocol_of(uri)}://; write the output to one of those")
    return stores[kind](uri)
