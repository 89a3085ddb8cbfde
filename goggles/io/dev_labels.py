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
DEV_LABELS_MAX_ROWS = 1_000_000
"""Rows at most, counted on the decoded table (a Parquet's footer, before its columns are
decoded): a 133 KB Parquet can hold 20 million run-length-encoded rows."""


def _parquet_table(data: bytes, shown: str) -> pa.Table:
    """A Parquet dev-labels file's table, its row count checked from the footer first."""
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows
    _check_rows(rows, shown)
    return pq.read_table(pa.BufferReader(data))


def _check_rows(rows: int, shown: str) -> None:
    if rows > DEV_LABELS_MAX_ROWS:
        raise ValueError(f"dev labels {shown} hold {rows:,} rows, more than the "
                         f"{DEV_LABELS_MAX_ROWS:,} a dev set needs; give a handful of labeled "
                         "images per class")


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
            dev = _parquet_table(storage.read_bytes(dev_labels_uri), shown)
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


def check_dev_labels(dev: pa.Table, num_classes: int, where: str = "dev labels") -> None:
    """Refuse, in one line naming the fix, a decoded ``uri,label`` table (whatever file format
    it came from) that cannot name ``num_classes`` clusters: more than
    :data:`DEV_LABELS_MAX_ROWS` rows, an empty or missing URI or label, more distinct labels than
    ``num_classes``, or one image given two different labels. Reads nothing."""
    _check_rows(dev.num_rows, where.removeprefix("dev labels "))
    for column in ("uri", "label"):
        values = pc.utf8_trim_whitespace(pc.fill_null(dev[column], ""))
        empty = int(pc.sum(pc.equal(values, "")).as_py() or 0)
        if empty:
            raise ValueError(f"{where}: {empty} of {dev.num_rows} rows have an empty {column}; "
                             f"give every row an image URI and a class name")
    names = pc.unique(dev["label"]).to_pylist()
    if len(names) > num_classes:
        shown = ", ".join(repr(n) for n in sorted(names)[:num_classes + 1])
        raise ValueError(f"{where} name {len(names)} classes ({shown}"
                         f"{', ...' if len(names) > num_classes + 1 else ''}) but the run has "
                         f"num_classes={num_classes}; raise num_classes (--num-classes) or "
                         "relabel the dev set with at most that many names")
    pairs = pa.table({"uri": dev["uri"], "label": dev["label"]}).group_by("uri").aggregate(
        [("label", "count_distinct")])
    twice = pairs.filter(pc.greater(pairs["label_count_distinct"], 1))
    if twice.num_rows:
        first = str(twice["uri"][0].as_py())
        labels = sorted({str(v) for v in dev.filter(pc.equal(dev["uri"], first))["label"]
                         .to_pylist()})
        raise ValueError(f"{where} label {twice.num_rows} image(s) twice with different "
                         f"classes, e.g. {redact(first)} as {' and '.join(map(repr, labels))}; "
                         "keep one label per image")


def positions(dev: pa.Table, image_uris: Sequence[str]) -> list[int | None]:
    """For each row of ``dev``, the position in ``image_uris`` of the image it names (exactly
    or by ``folder/name``), or None."""
    position = {uri: i for i, uri in enumerate(image_uris)}
    by_tail = {uri.rsplit("/", 2)[-2] + "/" + uri.rsplit("/", 1)[-1]: i
               for uri, i in position.items() if uri.count("/") >= 1}
    return [position.get(uri, by_tail.get("/".join(str(uri).rsplit("/", 2)[-2:])))
            for uri in dev["uri"].to_pylist()]


def check_against_manifest(dev: pa.Table, manifest: pa.Table,
                           where: str = "dev labels") -> None:
    """After ingest, before extraction: the dev rows that name an accepted image of the
    ``manifest`` (``uri, status, error``). None is an error that says how many rows name only
    images ingest rejected (with one's reason) and how many name no image; some rejected ones
    are a warning naming them."""
    accepted = pc.equal(manifest["status"], "accepted")
    kept = manifest.filter(accepted)["uri"].to_pylist()
    refused = manifest.filter(pc.invert(accepted))
    reasons = refused["error"].to_pylist()
    on_kept = positions(dev, kept)
    on_refused = positions(dev, refused["uri"].to_pylist())
    matched = sum(i is not None for i in on_kept)
    rejected = [(uri, reasons[j]) for uri, i, j in zip(dev["uri"].to_pylist(), on_kept,
                                                       on_refused, strict=True)
                if i is None and j is not None]
    if rejected:
        uri, reason = rejected[0]
        said = (f"{len(rejected)} of its {dev.num_rows} rows name images that ingest rejected, "
                f"e.g. {redact(str(uri))} ({reason})")
        if not matched:
            raise ValueError(f"{where}: no row names an accepted image; {said}; "
                             f"{dev.num_rows - len(rejected)} name no image of the source. Fix "
                             "or replace those images, or label accepted ones")
        logger.warning("%s: %s; those rows are not used", where, said)
    elif not matched:
        raise ValueError(f"none of the {dev.num_rows} rows of {where} match an image of the "
                         "source; use the same URIs (or folder/name) as the source")


def match_dev_labels(dev: pa.Table, image_uris: Sequence[str],
                     where: str = "dev labels") -> tuple[np.ndarray, list[str]]:
    """Positions in ``image_uris`` [N] of the dev set's images and their labels:
    ([D] positions, [D] names). URIs match exactly or by ``folder/name``; how many matched is
    logged once (with a few of those that did not), never row by row."""
    names, found, unmatched = [], [], []
    for uri, label, i in zip(dev["uri"].to_pylist(), dev["label"].to_pylist(),
                             positions(dev, image_uris), strict=True):
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
