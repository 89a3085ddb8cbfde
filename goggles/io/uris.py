"""URIs as goggles spells them: a local path or ``file://``, ``memory://``, ``gs://``, ``s3://``.

Pure string functions; :mod:`goggles.io.storage` re-exports them beside the I/O they serve.

Only the protocols of :data:`PROTOCOLS` are opened (plus those a user names in
``$GOGGLES_ALLOW_PROTOCOLS``, e.g. ``az,abfs``): goggles runs inside a cluster's namespace,
where a URI that makes it fetch ``http://`` or ``ftp://`` is a request forgery. fsspec's URL
chaining (``simplecache::s3://…``), credentials in a URI (``user:secret@``) and query strings
(a signed URL's signature) are refused for every protocol: credentials come from the
environment, and URIs end up in parameters, logs and artifacts. :func:`redact` and
:func:`scrub` take secrets out of a URI or a text on its way to a log, an error or an artifact.
"""

from __future__ import annotations

import os
import posixpath
import re

_PROTOCOL_ALIASES = {"gcs": "gs", "s3a": "s3"}
PROTOCOLS = ("file", "memory", "gs", "gcs", "s3", "s3a")
"""The protocols goggles opens: local files, fsspec's in-memory store, GCS and S3."""
ALLOW_PROTOCOLS_ENV = "GOGGLES_ALLOW_PROTOCOLS"
"""A comma-separated list of further fsspec protocols to allow (e.g. ``az,abfs``)."""
# ``user:secret@`` after the ``://`` and any further slashes (``gs:///user:secret@bucket``)
_USERINFO = re.compile(r"(://+)[^/?#\s]*@")
_QUERY = re.compile(r"[?#][^\s'\"]*")
_URI_IN_TEXT = re.compile(r"[A-Za-z][\w+.-]*(?:::[A-Za-z][\w+.-]*)*://[^\s'\"]+")


def is_local(uri: str) -> bool:
    """True for plain paths and file:// URIs."""
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    """The OS path of a local URI: ``file:///data`` and ``file://localhost/data`` are
    ``/data`` (RFC 8089: ``localhost`` is this machine's root); ``file://images`` stays the
    relative ``images``."""
    if not uri.startswith("file://"):
        return uri
    path = uri[len("file://"):]
    if path == "localhost" or path.startswith("localhost/"):
        return "/" + path[len("localhost"):].lstrip("/")
    return path


def absolute(uri: str) -> str:
    """``uri`` with a local path made absolute (``.`` and ``..`` folded, symlinks kept), so what
    an output records means the same thing from any working directory; remote URIs as given."""
    if not uri or not is_local(uri):
        return uri
    return os.path.abspath(local_path(uri))


def join(base: str, *parts: str) -> str:
    """Join URI parts with ``/`` (local paths use the OS separator)."""
    if is_local(base):
        return os.path.join(base, *parts)
    return posixpath.join(base, *parts)


def protocol_of(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def redact(uri: str) -> str:
    """``uri`` without any ``user:secret@`` part, query string or fragment (in every link of a
    chained URI), for messages, logs and artifacts."""
    if "://" not in uri:
        return uri
    return _QUERY.sub("", _USERINFO.sub(r"\1", uri))


def scrub(text: str) -> str:
    """``text`` with every URI in it redacted (for error messages of other libraries)."""
    return _URI_IN_TEXT.sub(lambda m: redact(m.group(0)), text)


def allowed_protocols() -> tuple[str, ...]:
    """:data:`PROTOCOLS` and those named in ``$GOGGLES_ALLOW_PROTOCOLS``."""
    extra = os.environ.get(ALLOW_PROTOCOLS_ENV, "")
    return PROTOCOLS + tuple(p.strip() for p in extra.split(",") if p.strip())


def refusal(uri: str) -> str | None:
    """Why goggles must not open ``uri`` (a sentence naming the fix), or ``None``."""
    if "::" in uri:
        return ("'::' (fsspec's URL chaining) is not accepted; give the store's own URI, e.g. "
                "gs://bucket/images")
    protocol = protocol_of(uri)
    if protocol not in allowed_protocols():
        return (f"the {protocol}:// protocol is not accepted; goggles opens local paths, "
                "file://, memory://, gs:// and s3:// (set GOGGLES_ALLOW_PROTOCOLS to allow "
                "another fsspec protocol, e.g. GOGGLES_ALLOW_PROTOCOLS=az)")
    if "://" in uri:
        # the authority after ``://`` and any further slashes: ``gs:///user:secret@bucket``
        # and ``file://user:secret@host/`` carry credentials as surely as ``gs://user:…@``
        rest = uri.split("://", 1)[1]
        if "@" in rest.lstrip("/").split("/", 1)[0]:
            return ("credentials in a URI are not accepted (URIs are stored in parameters, "
                    "logs and artifacts); remove them and provide them through the "
                    "environment: GCS application default credentials or "
                    "GOOGLE_APPLICATION_CREDENTIALS; AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                    "or AWS_PROFILE")
        if protocol != "file" and ("?" in rest or "#" in rest):
            return ("a query string is not accepted (a signed URL carries its credentials "
                    "there); give the plain object URI and provide credentials through the "
                    "environment")
    return None


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
