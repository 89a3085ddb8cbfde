"""``export_labels``: a run's labels, filtered by confidence, written in the format of the tool
that reads them next, into an empty folder or bucket prefix.

What is refused, before anything is written (one line naming the fix):

* a URI that :func:`goggles.io.uris.refusal` refuses, for OUT or DEST;
* an OUT without ``labels.parquet`` (OUT may also name a labels Parquet file itself, e.g. the
  ``labels`` artifact of a cluster run);
* a DEST that is OUT or holds it, lies in OUT's ``artifacts/``, or lies in the run's source
  (a later run over that source would take the exported copies for new images);
* an ``only`` file (``--only``) without a ``uri`` column, or none of whose URIs is an image of
  the run;
* a DEST that is not empty. There is no overwrite: a stale file in a class folder would silently
  join the dataset, and deleting in a bucket is the owner's call. Export into a new DEST, or
  delete the old one first.

``DEST/export.json`` is written last: what was exported, from where, with which threshold and
how many images per class. A DEST without it is an interrupted export.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from goggles import __version__
from goggles.config import ConfigError
from goggles.export.labelstudio import write_label_studio
from goggles.export.naming import class_folders, rename
from goggles.export.writers import (
    Selected,
    links,
    write_csv,
    write_huggingface,
    write_imagefolder,
    write_jsonl,
)
from goggles.io import listing, storage
from goggles.io.artifacts import LABELS_SCHEMA, output_paths
from goggles.io.dev_labels import match_dev_labels
from goggles.io.uris import is_inside, redact, refusal

logger = logging.getLogger(__name__)

FORMATS = ("imagefolder", "csv", "jsonl", "label-studio", "huggingface")
TREES = ("imagefolder", "huggingface")
"""The formats that lay the images out in class folders."""
RECORD = "export.json"


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote.

    Attributes
    ----------
    format, dest, source : the format, the destination and the labels read (redacted).
    min_confidence : the threshold applied.
    written : images exported; skipped : images below ``min_confidence``, left out.
    per_class : images exported per class name (every class of the run, 0 included).
    folders : class name -> its folder (tree formats; differs where a name was not a safe
        path component).
    files : the files written besides the images, relative to ``dest``.
    linked : whether the images are symlinks (else copies; tree formats only).
    only : the file listing the images exported (``--only``; redacted), ``""`` for all.
    """

    format: str
    dest: str
    source: str
    min_confidence: float
    written: int
    skipped: int
    per_class: dict[str, int]
    folders: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    linked: bool = False
    only: str = ""

    def line(self) -> str:
        """One line for the command line."""
        total = self.written + self.skipped
        left = (f" ({self.skipped} below confidence {self.min_confidence:g} left out)"
                if self.skipped else "")
        how = ("; the images are relative symlinks to the source images, not copies, so the "
               "tree is empty on another machine (--copy copies them)") if self.linked else ""
        how += f" (only those {self.only} lists)" if self.only else ""
        classes = ", ".join(f"{name} {count}" for name, count in self.per_class.items())
        return (f"exported {self.written} of {total} images{left} as {self.format} to "
                f"{self.dest}: {classes}{how}")


def export_labels(output_uri: str, dest_uri: str, fmt: str, *, min_confidence: float = 0.0,
                  link: bool = True, label_studio_root: str = "/",
                  only: str = "", names: Mapping[str, str] | None = None) -> ExportSummary:
    """Export the labels of the run in ``output_uri`` to ``dest_uri``.

    Parameters
    ----------
    output_uri : a run's output folder (OUT) or a labels Parquet file.
    dest_uri : an empty or missing folder, local or in a bucket.
    fmt : one of :data:`FORMATS`.
    min_confidence : only labels whose confidence is at least this are exported.
    link : tree formats, local images into a local DEST: symlinks (else copies; a bucket on
        either side always gets copies).
    label_studio_root : ``label-studio``: Label Studio's
        ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``, which local image paths are relative to.
    only : a CSV or Parquet (by its suffix) with a ``uri`` column, e.g. what ``goggles
        suggest`` writes: only those images are exported (matched as dev labels are: by URI,
        else by ``folder/name``); ``""``: all.
    names : new class names by the run's (``{"cluster_0": "cat"}``), applied to the exported
        labels only (the run is unchanged); names it leaves out are kept.

    Returns
    -------
    ExportSummary
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}", "format")
    if not 0.0 <= min_confidence <= 1.0:
        raise ConfigError(f"--min-confidence {min_confidence} is not a probability; give a "
                          "number from 0 to 1", "min_confidence")
    for name, uri in (("OUT", output_uri), ("DEST", dest_uri), ("--only", only)):
        if not uri:
            continue
        reason = refusal(uri)
        if reason is not None:
            raise ConfigError(f"{name} {redact(uri)!r}: {reason}")
    labels_uri, metrics = _locate(output_uri)
    _check_dest(dest_uri, output_uri, labels_uri, str(metrics.get("source_uri", "")))
    labels = storage.read_parquet(labels_uri)
    missing = set(LABELS_SCHEMA.names) - set(labels.column_names)
    if missing:
        raise ValueError(f"{redact(labels_uri)} is not a goggles labels table: it lacks "
                         f"{', '.join(sorted(missing))}")
    if names:
        labels = rename(labels, names)
    class_names = sorted(set(labels["label_name"].to_pylist()))
    if only:
        labels = labels.take(_only_rows(only, labels))
    kept = labels.filter(pc.greater_equal(labels["confidence"], min_confidence))
    rows = Selected.from_table(kept)
    folders = class_folders(class_names) if fmt in TREES else {}
    if fmt == "imagefolder":
        files = write_imagefolder(rows, dest_uri, folders, link=link)
    elif fmt == "huggingface":
        files = write_huggingface(rows, dest_uri, folders, link=link)
    elif fmt == "csv":
        files = write_csv(rows, dest_uri)
    elif fmt == "jsonl":
        files = write_jsonl(rows, dest_uri)
    else:
        version = " ".join(["goggles", __version__, str(metrics.get("method", ""))]).strip()
        files = write_label_studio(rows, dest_uri, class_names, model_version=version,
                                   document_root=label_studio_root)
    counts = Counter(rows.label)
    summary = ExportSummary(
        format=fmt, dest=redact(dest_uri), source=redact(labels_uri),
        min_confidence=min_confidence, written=len(rows), skipped=labels.num_rows - len(rows),
        per_class={name: counts.get(name, 0) for name in class_names},
        folders=folders, files=[*files, RECORD],
        linked=fmt in TREES and links(rows, dest_uri, link), only=redact(only))
    record = {**asdict(summary), "goggles_version": __version__,
              "probs_order": _probs_order(labels)}
    storage.write_json(record, storage.join(dest_uri, RECORD))
    logger.debug("%s", summary.line())  # the command prints it; logged only for -v
    return summary


def _locate(output_uri: str) -> tuple[str, dict[str, Any]]:
    """The labels Parquet of ``output_uri`` and the run's metrics (``{}`` when absent)."""
    if storage.is_file(output_uri):
        return output_uri, {}
    paths = output_paths(output_uri)
    if not storage.exists(paths["labels"]):
        raise ValueError(f"no labels under {redact(output_uri)!r}: give the --output folder of a "
                         "finished goggles run, or its labels Parquet file")
    try:
        metrics = storage.read_json(paths["metrics"])
    except storage.MissingObjectError:
        metrics = {}
    return paths["labels"], metrics if isinstance(metrics, dict) else {}


def _only_rows(only: str, labels: pa.Table) -> list[int]:
    """Positions in ``labels`` of the images the file ``only`` lists (its ``uri`` column), in
    order, each once."""
    shown = redact(only)
    try:
        table = (storage.read_parquet(only) if only.endswith(".parquet") else
                 pacsv.read_csv(pa.BufferReader(storage.read_bytes(only))))
    except pa.ArrowInvalid as error:
        raise ConfigError(f"--only {shown} is not a CSV or Parquet table "
                          f"({type(error).__name__}); give the file goggles suggest --output "
                          "wrote, or any table with a uri column", "only") from None
    if "uri" not in table.column_names:
        raise ConfigError(f"--only {shown} has no uri column (it has "
                          f"{', '.join(table.column_names[:8])}); give a table with one row per "
                          "image and its URI in a column named uri", "only")
    listed = pa.table({"uri": pc.cast(table["uri"], pa.string()),
                       "label": pa.nulls(table.num_rows, pa.string())})
    try:
        positions, _ = match_dev_labels(listed, labels["uri"].to_pylist(), f"--only {shown}")
    except ValueError as error:
        raise ConfigError(str(error), "only") from None
    return list(dict.fromkeys(positions.tolist()))


def _check_dest(dest: str, output: str, labels_uri: str, source: str) -> None:
    """Refuse a DEST that would overwrite or mix into the run's files, or that is not empty."""
    shown = redact(dest)
    if is_inside(labels_uri, dest) or is_inside(output, dest):
        raise ConfigError(f"DEST {shown!r} is the run's output or holds it; export into a "
                          "folder of its own, e.g. OUT/export-<format>")
    if labels_uri != output and is_inside(dest, storage.join(output, "artifacts")):
        raise ConfigError(f"DEST {shown!r} lies in the run's artifacts; choose a folder outside "
                          f"{redact(storage.join(output, 'artifacts'))}")
    if source and is_inside(dest, source):
        raise ConfigError(f"DEST {shown!r} lies in the run's source {redact(source)}: a later run "
                          "over that source would take the exported images for new ones; "
                          "choose a folder outside it")
    if storage.is_file(dest):
        raise ConfigError(f"DEST {shown!r} is a file; give a folder (it receives the "
                          "export's files)")
    existing = listing.list_folder(dest)
    if existing:
        first = sorted(existing)[0]
        raise ConfigError(f"DEST {shown!r} is not empty ({len(existing)} files, e.g. {first}); "
                          "export into a new folder, or delete this one first")


def _probs_order(labels: pa.Table) -> list[str | None]:
    """The class name of each position of ``probs`` (a cluster no image landed in: ``None``)."""
    width = pc.max(pc.list_value_length(labels["probs"])).as_py() or 0
    names: list[str | None] = [None] * width
    for cluster, name in zip(labels["label"].to_pylist(), labels["label_name"].to_pylist(),
                             strict=True):
        names[cluster] = name
    return names
