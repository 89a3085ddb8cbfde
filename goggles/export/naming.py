"""Names in an exported tree: class folders and image files that are safe path components on
every store and that the readers do not skip, with collisions settled deterministically."""

from __future__ import annotations

import posixpath
import re
from collections import Counter
from collections.abc import Sequence

MAX_BYTES = 200
"""Longest component written, in UTF-8 bytes (file systems allow 255; room for prefixes)."""
_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f]")
_MAX_ROUNDS = 32


def safe_component(name: str) -> str:
    """``name`` as one path component: no ``/``, ``\\`` or control characters (each becomes
    ``_``), no surrounding spaces, not empty, ``.`` or ``..``, and not hidden (a leading ``.``
    or ``__`` becomes ``_``: ``datasets`` skips hidden files and folders), at most
    :data:`MAX_BYTES` bytes.

    Examples
    --------
    >>> safe_component("cats/dogs"), safe_component(".."), safe_component(" ")
    ('cats_dogs', '_..', '_')
    """
    text = _UNSAFE.sub("_", name).strip()
    if text.startswith("__"):
        text = "_" + text.lstrip("_")
    if not text or text.startswith("."):
        text = "_" + text
    if len(text.encode()) > MAX_BYTES:
        stem, suffix = posixpath.splitext(text)
        suffix = suffix if len(suffix.encode()) <= 16 else ""
        text = stem.encode()[:MAX_BYTES - len(suffix.encode())].decode(errors="ignore") + suffix
    return text


def unique_names(ids: Sequence[int], names: Sequence[str]) -> list[str]:
    """``names`` made distinct (ignoring case, as some file systems do): every name shared by
    several items becomes ``<id>-<name>`` for each of them, repeated until none is shared. The
    result depends only on the items, not on their order.

    Parameters
    ----------
    ids : a distinct id per item (the image ids).
    names : the wanted name of each item.
    """
    current = list(names)
    for _ in range(_MAX_ROUNDS):
        counts = Counter(n.casefold() for n in current)
        shared = [i for i, n in enumerate(current) if counts[n.casefold()] > 1]
        if not shared:
            return current
        for i in shared:
            current[i] = f"{ids[i]}-{current[i]}"
    raise ValueError(f"cannot make {len(names)} names distinct; are the ids distinct?")


def class_folders(label_names: Sequence[str]) -> dict[str, str]:
    """A folder name for each class name: its :func:`safe_component`; where classes would share
    a folder (``a/b`` and ``a_b``; ``Cat`` and ``cat`` on a case-blind file system), each of
    them gets ``<folder>-<rank>``, its rank among the sorted class names."""
    names = sorted(set(label_names))
    wanted = [safe_component(n) for n in names]
    counts = Counter(w.casefold() for w in wanted)
    folders = {name: (w if counts[w.casefold()] == 1 else f"{w}-{rank}")
               for rank, (name, w) in enumerate(zip(names, wanted, strict=True))}
    if len({f.casefold() for f in folders.values()}) < len(folders):  # "a-1" was a class too
        folders = {name: f"{rank}-{w}"
                   for rank, (name, w) in enumerate(zip(names, wanted, strict=True))}
    return folders


def file_name(uri: str) -> str:
    """The last part of an image URI, as a safe component."""
    return safe_component(posixpath.basename(uri.rstrip("/")) or "image")
