"""Dev labels from Label Studio: its JSON exports read back as the ``uri, label`` table that
:func:`goggles.io.dev_labels.read_dev_labels_table` returns for a CSV, and the names the tasks and
labeling configuration that ``goggles export --format label-studio`` writes share with it.

Two of Label Studio's export formats are read, as Label Studio writes them (Export → "JSON" and
"JSON-MIN"; the same through ``GET /api/projects/<id>/export?exportType=JSON|JSON_MIN``):

* **JSON**: a list of tasks, each ``{"id", "data": {<the labeling config's $keys>: ...},
  "annotations": [{"id", "result": [{"type": "choices", "from_name", "to_name",
  "value": {"choices": [name]}}, {"type": "textarea", "value": {"text": [name]}}, ...],
  "was_cancelled", "created_at", "updated_at", ...}], "predictions": [...], ...}``. Per task the
  latest annotation not cancelled (skipped) counts; predictions are never labels.
* **JSON-MIN**: one flat object per annotation: the task's ``data`` keys, then each control's
  value under its name (a ``Choices``: the chosen name, or ``{"choices": [...]}`` for several;
  a ``TextArea``: its text, or a list of texts), with ``id`` (the task), ``annotation_id``,
  ``created_at`` and ``updated_at``.

An annotation's label is the text of the ``TextArea`` :data:`OTHER` when filled (a class no
cluster has), else its one choice. The image is the task's :data:`URI_KEY` (the URI goggles
exported), else ``uri`` (goggles' exports before it), else the ``image`` URL with Label Studio's
local-files prefix removed (a path relative to the document root: ``/`` + path, which matches a
run's URIs exactly for the default root ``/`` and by ``folder/name`` otherwise).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa

logger = logging.getLogger(__name__)

IMAGE_KEY = "image"
"""The task's ``data`` key the labeling configuration's ``<Image value="$image">`` reads (also
the Image object's name, the results' ``to_name``)."""
URI_KEY = "goggles_uri"
"""The task's ``data`` key holding the image's URI exactly as the run lists it."""
CHOICE = "choice"
"""The ``Choices`` control: one choice per class of the run."""
OTHER = "other"
"""The ``TextArea`` control: the name of a class no cluster has; when filled it is the label."""
LOCAL_FILES = "/data/local-files/?d="
"""How Label Studio serves a local file: this prefix, then its path relative to
``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` (URL-quoted)."""

_SKIPPED, _EMPTY, _AMBIGUOUS = "skipped or cancelled", "without a label", "with several labels"


def image_uri(data: Mapping[str, Any]) -> str | None:
    """The run URI of a task's ``data`` (see the module's docstring); ``None`` when it names
    no image."""
    for key in (URI_KEY, "uri"):
        if isinstance(data.get(key), str) and data[key]:
            return str(data[key])
    url = data.get(IMAGE_KEY)
    if not isinstance(url, str) or not url:
        return None
    parts = urlsplit(url)
    if parts.path.endswith(LOCAL_FILES.split("?")[0]) and "d" in parse_qs(parts.query):
        return "/" + parse_qs(parts.query)["d"][0].lstrip("/")
    return url


def _texts(value: Any) -> list[str]:
    """The non-empty strings of a control's value (a string, a list, or ``{"text"|"choices":
    [...]}``), stripped."""
    if isinstance(value, Mapping):
        value = value.get("text", value.get("choices"))
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return [str(v).strip() for v in value if isinstance(v, str | int | float) and str(v).strip()]


def _pick(others: list[str], choices: list[str]) -> str:
    """The label of one annotation: the typed class, else the choice; ``_EMPTY`` or
    ``_AMBIGUOUS`` when there is no single one."""
    for names in (others, choices):
        if len(set(names)) > 1:
            return _AMBIGUOUS
        if names:
            return names[0]
    return _EMPTY


def result_label(result: Sequence[Mapping[str, Any]]) -> str:
    """The label of a JSON export's annotation ``result`` (its regions): the ``textarea`` text,
    else the ``choices`` (the control :data:`CHOICE` where several controls chose)."""
    others: list[str] = []
    choices: dict[str, list[str]] = {}
    for region in result:
        if not isinstance(region, Mapping):
            continue
        value = region.get("value", {})
        if region.get("type") == "textarea":
            others += _texts(value.get("text") if isinstance(value, Mapping) else None)
        elif region.get("type") == "choices" and isinstance(value, Mapping):
            choices.setdefault(str(region.get("from_name", "")), []).extend(
                _texts(value.get("choices")))
    chosen = choices.get(CHOICE) or [name for names in choices.values() for name in names]
    return _pick(others, chosen)


def _when(record: Mapping[str, Any]) -> tuple[float, float, int]:
    """Sort key of an annotation: last updated, then created, then its id."""
    def seconds(key: str) -> float:
        text = record.get(key)
        try:
            return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
        except ValueError:
            return float("-inf")
    number = record.get("annotation_id", record.get("id"))
    return seconds("updated_at"), seconds("created_at"), number if isinstance(number, int) else -1


def _from_tasks(tasks: list[Mapping[str, Any]], counts: Counter[str]) -> list[tuple[str, str]]:
    """(uri, label) of the tasks of a JSON export."""
    pairs = []
    for task in tasks:
        annotations = [a for a in task.get("annotations") or [] if isinstance(a, Mapping)]
        kept = [a for a in annotations if not a.get("was_cancelled")]
        if not kept:
            counts[_SKIPPED if annotations else "not annotated"] += 1
            continue
        label = result_label(max(kept, key=_when).get("result") or [])
        uri = image_uri(task.get("data") or {})
        if label in (_EMPTY, _AMBIGUOUS) or uri is None:
            counts[label if uri else "without an image"] += 1
            continue
        pairs.append((uri, label))
    return pairs


def _from_min(rows: list[Mapping[str, Any]], counts: Counter[str]) -> list[tuple[str, str]]:
    """(uri, label) of the rows of a JSON-MIN export: the latest row per task."""
    latest: dict[Any, Mapping[str, Any]] = {}
    for row in rows:
        task = row.get("id", len(latest))
        if task not in latest or _when(row) >= _when(latest[task]):
            latest[task] = row
    pairs = []
    for row in latest.values():
        label = _pick(_texts(row.get(OTHER)), _texts(row.get(CHOICE, row.get("label"))))
        uri = image_uri(row)
        if label in (_EMPTY, _AMBIGUOUS) or uri is None:
            counts[label if uri else "without an image"] += 1
            continue
        pairs.append((uri, label))
    return pairs


def read_label_studio(payload: bytes, shown: str) -> pa.Table:
    """A Label Studio JSON or JSON-MIN export (``payload``, the file's bytes; ``shown``, its
    redacted name for messages) as the table ``uri, label`` (strings), one row per labeled task.

    Tasks skipped, cancelled, not annotated, without a label or with several are left out and
    counted in one log line; an export with no label at all, or that is not a Label Studio
    export, is refused naming the fix.
    """
    try:
        items = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        items = None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ValueError(f"dev labels {shown} are not a Label Studio JSON export (a list of "
                         "tasks); export the project as JSON or JSON-MIN in Label Studio, or "
                         "give a CSV/Parquet with columns uri,label")
    counts: Counter[str] = Counter()
    full = any("data" in item or "annotations" in item for item in items)
    if not full and items and not any(key in item for item in items
                                      for key in (CHOICE, "label", OTHER)):
        raise ValueError(f"dev labels {shown}: this JSON-MIN export has no {CHOICE!r}, 'label' "
                         f"or {OTHER!r} field (it has {sorted(items[0])[:8]}); export JSON "
                         "instead, or name the project's Choices control 'choice'")
    pairs = _from_tasks(items, counts) if full else _from_min(items, counts)
    predicted = sum(len(item.get("predictions") or []) for item in items) if full else 0
    left_out = ", ".join(f"{n} {why}" for why, n in sorted(counts.items()))
    logger.info("Label Studio export %s (%s): %d %s, %d labeled%s%s", shown,
                "JSON" if full else "JSON-MIN", len(items), "tasks" if full else "rows",
                len(pairs), f"; left out: {left_out}" if left_out else "",
                f"; {predicted} predictions ignored (predictions are not labels)"
                if predicted else "")
    if not pairs:
        unannotated = predicted and not any(item.get("annotations") for item in items)
        hint = (" (tasks as goggles exports them hold predictions only: label them in Label "
                "Studio and export from there)" if unannotated else "")
        fix = ("Submit annotations (a choice, or a class typed in the text box) and export "
               "again")
        if counts["without an image"]:
            fix = (f"Name each task's image in data.{URI_KEY}, data.uri or data.{IMAGE_KEY} "
                   "(goggles export --format label-studio does)")
        raise ValueError(f"dev labels {shown}: none of the {len(items)} items of this Label "
                         f"Studio export has a label{hint}; {left_out or 'it is empty'}. {fix}")
    uris, labels = zip(*pairs, strict=True)
    return pa.table({"uri": pa.array(uris, pa.string()), "label": pa.array(labels, pa.string())})
