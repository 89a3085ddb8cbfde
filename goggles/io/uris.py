"""URIs as goggles spells them: a local path or ``file://``, ``memory://``, ``gs://``, ``s3://``.

Pure string functions; :mod:`goggles.io.storage` re-exports them beside the I/O they serve.
"""

from __future__ import annotations

import os
import posixpath

_PROTOCOL_ALIASES = {"gcs": "gs", "s3a": "s3"}


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


def redact(uri: str) -> str:
    """``uri`` without any ``user:secret@`` part or query string, for messages and logs."""
    if "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    netloc, slash, path = rest.partition("/")
    return f"{scheme}://{netloc.rpartition('@')[2]}{slash}{path.split('?', 1)[0]}"


def comparable(uri: str) -> str:
    """``uri`` in one spelling per location: local paths absolute with symlinks resolved and
    ``.``/``..`` folded; remote URIs with protocol aliases (gcs://, s3a://) folded."""
    if is_local(uri):
        return os.path.realpath(local_path(uri))
    protocol, path = uri.split("://", 1)
    protocol = _PROTOCOL_ALIASES.get(protocol, protocol)
    return f"{protocol}://{posixpath.normpath('/' + path).lstrip('/')}"


def is_inside(uri: str, folder: str) -> bool:
    """Whether ``uri`` is ``folder`` or lies under it (after :func:`comparable`)."""
    inner, outer = comparable(uri), comparable(folder)
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")
