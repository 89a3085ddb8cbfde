"""Dev labels, the one labeled input: a CSV (or Parquet, by its suffix) with columns ``uri,label``
for a handful of images, or a Label Studio JSON export (by its ``.json`` suffix,
:mod:`goggles.io.label_studio`), which names the clusters (and is checked before a run starts)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from goggles.io import storage
from goggles.io.label_studio import read_label_studio
from goggles.io.uris import redact

logger = logging.getLogger(__name__)

DEV_LABELS_MAX_BYTES = 64 * 2**20
"""A dev set is a handful of labels per class; a larger file is refused before it is read."""


def read_dev_labels_table(dev_labels_uri: str) -> pa.Table:
    """A dev-labels file (CSV, or Parquet or a Label Studio JSON export by its suffix) as a table
    with string columns ``uri, label``; a file too large, unparsable or without those columns is
    refused naming the fix (never quoting its content)."""
    shown = redact(dev_labels_uri)
    size = storage.size(dev_labels_uri)
    if size > DEV_LABELS_MAX_BYTES:
        raise ValueError(f"dev labels {shown} hold {size:,} bytes, more than the "
                         f"{DEV_LABELS_MAX_BYTES // 2**20} MiB a dev set needs; give a handful "
                         "of labeled images per class")
    if dev_labels_uri.lower().endswith(".json"):
        return read_label_studio(storage.read_bytes(dev_labels_uri), shown)
    try:
        if dev_labels_uri.endswith(".parquet"):
            dev = storage.read_parquet(dev_labels_uri)
        else:
            import pyarrow.csv as pacsv

            dev = pacsv.read_csv(pa.BufferReader(storage.read_bytes(dev_labels_uri)))
    except pa.ArrowInvalid as error:
        # the parser's message quotes the offending line: a wrong file must not leak its content
        raise ValueError(f"dev labels {shown} are not a CSV or Parquet table with columns "
                         f"uri,label ({type(error).__name__}); check the file (a Label Studio "
                         "export must end in .json)") from None
    missing = {"uri", "label"} - set(dev.column_names)
    if missing:
        raise ValueError(f"dev labels {shown} lack column(s) {sorted(missing)}; give a CSV or "
                         "Parquet with columns uri,label")
    return pa.table({"uri": pc.cast(dev["uri"], pa.string()),
                     "label": pc.cast(dev["label"], pa.string())})


def match_dev_labels(dev: pa.Table, image_uris: Sequence[str],
                     where: str = "dev labels") -> tuple[np.ndarray, list[str]]:
    """Positions in ``image_uris`` [N] of the dev set's images and their labels:
    ([D] positions, [D] names). URIs match exactly or by ``folder/name``; how many matched is
    logged once (with a few of those that did not), never row by row."""
    position = {uri: i for i, uri in enumerate(image_uris)}
    by_tail = {uri.rsplit("/", 2)[-2] + "/" + uri.rsplit("/", 1)[-1]: i
               for uri, i in position.items() if uri.count("/") >= 1}
    names, found, unmatched = [], [], []
    for uri, label in zip(dev["uri"].to_pylist(), dev["label"].to_pylist(), strict=True):
        i = position.get(uri, by_tail.get("/".join(str(uri).rsplit("/", 2)[-2:])))
        if i is None:
            unmatched.append(str(uri))
            continue
        names.append(str(label))
        found.append(i)
    if not names:
        raise ValueError(f"none of the {dev.num_rows} rows of {where} match an image of the "
                         "source; use the same URIs (or folder/name) as the source")
    if unmatched:
        logger.warning("%s: %d of %d rows match an image; %d do not, e.g. %s", where,
                       len(names), dev.num_rows, len(unmatched),
                       ", ".join(redact(u) for u in unmatched[:3]))
    else:
        logger.info("%s: all %d rows match an image", where, len(names))
    return np.asarray(found, dtype=np.int64), names


def read_dev_labels(dev_labels_uri: str, rows: pa.Table) -> tuple[np.ndarray, list[str]]:
    """A dev set matched to the accepted images ``rows``: ([D] row positions, [D] names)."""
    return match_dev_labels(read_dev_labels_table(dev_labels_uri), rows["uri"].to_pylist(),
                            f"dev labels {redact(dev_labels_uri)}")
