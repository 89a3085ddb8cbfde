"""Names in an exported tree: class folders and image files that are safe path components on
every store and that the readers do not skip, with collisions settled deterministically."""

from __future__ import annotations

import posixpath
import re
from collections import Counter
from collections.abc import Mapping, Sequence

import pyarrow as pa

from goggles.config import ConfigError

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


def parse_names(text: str) -> dict[str, str]:
    """New class names from ``cluster_0=cat,cluster_1=dog`` (commas or new lines between the
    pairs, ``=`` or ``,`` within one: a two-column CSV file reads too) or a JSON object.

    Examples
    --------
    >>> parse_names("cluster_0=cat, cluster_1=dog")
    {'cluster_0': 'cat', 'cluster_1': 'dog'}
    """
    import json

    stripped = text.strip()
    if stripped.startswith("{"):
        loaded = json.loads(stripped)
        if not isinstance(loaded, dict):
            raise ConfigError("--names: a JSON mapping file must hold one object, e.g. "
                              '{"cluster_0": "cat"}', "names")
        return {str(k): str(v) for k, v in loaded.items()}
    lines = stripped.splitlines()
    pairs = [p for p in (lines if len(lines) > 1 else stripped.split(",")) if p.strip()]
    result: dict[str, str] = {}
    for pair in pairs:
        old, sep, new = pair.partition("=") if "=" in pair else pair.partition(",")
        if not sep or not old.strip() or not new.strip():
            raise ConfigError(f"--names: {pair.strip()!r} is not OLD=NEW; give e.g. "
                              "cluster_0=cat,cluster_1=dog or a file of such lines", "names")
        result[old.strip()] = new.strip()
    if len(result) < len(pairs):
        raise ConfigError("--names: a class is named twice; name each once", "names")
    return result


def rename(labels: pa.Table, names: Mapping[str, str]) -> pa.Table:
    """``labels`` (a labels table) with each ``label_name`` in ``names`` replaced by its new
    name. A name that is no class of the run is an error naming the run's classes."""
    current = labels["label_name"].to_pylist()
    unknown = sorted(set(names) - set(current))
    if unknown:
        raise ConfigError(f"--names: {', '.join(unknown)} is not a class of this run; its "
                          f"classes are {', '.join(sorted(set(current)))}", "names")
    column = labels.schema.get_field_index("label_name")
    renamed = pa.array([names.get(name, name) for name in current],
                       type=labels.schema.field(column).type)
    return labels.set_column(column, labels.schema.field(column), renamed)
