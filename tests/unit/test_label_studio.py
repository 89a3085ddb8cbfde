"""Dev labels from Label Studio's exports (goggles/io/label_studio.py through
``read_dev_labels_table``): the same (uri, label) pairs as the CSV a person would have typed.

The exports are built field for field as Label Studio 1.23.2 writes them (Export → JSON and
JSON-MIN, i.e. ``GET /api/projects/<id>/export?exportType=JSON|JSON_MIN``; the formats of its
documentation page "Export annotations and data from Label Studio"), copied from what that
version returned for a project with goggles' labeling config: tasks with ``id``,
``annotations`` (``result`` regions, ``was_cancelled``, ISO ``created_at``/``updated_at`` with a
``Z``, the ``prediction`` the annotation started from), ``predictions`` as a list of prediction
ids, ``data`` as imported; JSON-MIN one flat object per annotation not cancelled.
tests/integration/test_label_studio.py does the same round trip through the real Label Studio.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from goggles.io.dev_labels import match_dev_labels, read_dev_labels_table
from goggles.io.label_studio import image_uri

ROOT = "/srv/images"
"""The LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT the tasks' URLs are relative to."""


def region(name: str, kind: str = "choices", control: str = "choice") -> dict[str, Any]:
    """One ``result`` item as the labeling interface submits it."""
    value = {"choices": [name]} if kind == "choices" else {"text": [name]}
    return {"id": f"r-{control}-{name}", "from_name": control, "to_name": "image", "type": kind,
            "value": value, "origin": "manual"}


def annotation(number: int, task: int, result: list[dict[str, Any]], *, minute: int,
               cancelled: bool = False) -> dict[str, Any]:
    """An annotation as Label Studio 1.23.2's JSON export writes it."""
    stamp = f"2026-12-05T12:{minute:02d}:45.057795Z"
    return {"id": number, "completed_by": 1, "result": result, "was_cancelled": cancelled,
            "ground_truth": False, "created_at": stamp, "updated_at": stamp,
            "draft_created_at": None, "lead_time": 2.0,
            "prediction": {"id": task, "result": [region("alpha")], "model_version": "goggles x",
                           "created_ago": "0 minutes", "score": 0.5, "cluster": None,
                           "neighbors": None, "mislabeling": 0.0, "created_at": stamp,
                           "updated_at": stamp, "model": None, "model_run": None, "task": task,
                           "project": 1},
            "result_count": len(result), "unique_id": f"u-{number}", "import_id": None,
            "last_action": None, "bulk_created": False, "task": task, "project": 1,
            "updated_by": 1, "parent_prediction": None, "parent_annotation": None,
            "last_created_by": None}


def task(number: int, data: dict[str, Any], annotations: list[dict[str, Any]]) -> dict[str, Any]:
    """A task as Label Studio 1.23.2's JSON export writes it (``predictions``: their ids)."""
    return {"id": number, "annotations": annotations, "drafts": [], "predictions": [number],
            "data": data, "meta": {}, "created_at": "2026-12-05T12:00:44.886361Z",
            "updated_at": "2026-12-05T12:30:45.192068Z", "allow_skip": True,
            "inner_id": number, "total_annotations": len(annotations),
            "cancelled_annotations": sum(a["was_cancelled"] for a in annotations),
            "total_predictions": 1, "comment_count": 0, "unresolved_comment_count": 0,
            "last_comment_updated_at": None, "project": 1, "updated_by": 1,
            "comment_authors": []}


def data(path: str) -> dict[str, str]:
    """A task's data as goggles exports it: Label Studio's local-files URL and the run's URI."""
    return {"image": "/data/local-files/?d=" + path[len(ROOT) + 1:].replace(" ", "%20"),
            "goggles_uri": path}


URIS = [f"{ROOT}/{folder}/img {i}.png" for folder in ("a", "b") for i in range(4)]
EXPECTED = {URIS[0]: "alpha", URIS[1]: "beta", URIS[2]: "zebra", URIS[3]: "beta",
            URIS[4]: "alpha"}
"""What the person labeled: 0, 1 chosen; 2 a class typed in the text box over a choice; 3
relabeled later (the later annotation counts, though its id is lower); 4 chosen after an
annotation that was skipped. Tasks 5 (skipped), 6 (submitted empty) and 7 (not annotated) give
no label."""


def json_export() -> list[dict[str, Any]]:
    return [
        task(1, data(URIS[0]), [annotation(1, 1, [region("alpha")], minute=1)]),
        task(2, data(URIS[1]), [annotation(2, 2, [region("beta")], minute=2)]),
        task(3, data(URIS[2]), [annotation(3, 3, [region("alpha"),
                                                  region("zebra", "textarea", "other")],
                                           minute=3)]),
        task(4, data(URIS[3]), [annotation(9, 4, [region("beta")], minute=9),
                                annotation(4, 4, [region("alpha")], minute=4)]),
        task(5, data(URIS[4]), [annotation(5, 5, [], minute=5, cancelled=True),
                                annotation(10, 5, [region("alpha")], minute=6)]),
        task(6, data(URIS[5]), [annotation(6, 6, [], minute=7, cancelled=True)]),
        task(7, data(URIS[6]), [annotation(7, 7, [], minute=8)]),
        task(8, data(URIS[7]), []),
    ]


def json_min_export() -> list[dict[str, Any]]:
    """The JSON-MIN export of the same project: one row per annotation not cancelled."""
    rows = []
    for item in json_export():
        for note in item["annotations"]:
            if note["was_cancelled"]:
                continue
            row = {**item["data"], "id": item["id"]}
            for part in note["result"]:
                row[part["from_name"]] = part["value"].get("choices", part["value"].get("text"))[0]
            rows.append({**row, "annotator": 1, "annotation_id": note["id"],
                         "created_at": note["created_at"], "updated_at": note["updated_at"],
                         "lead_time": note["lead_time"]})
    return rows


def pairs(path: Path) -> set[tuple[str, str]]:
    table = read_dev_labels_table(str(path))
    return set(zip(table["uri"].to_pylist(), table["label"].to_pylist(), strict=True))


def write_csv(path: Path, labels: dict[str, str]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["uri", "label"])
        writer.writerows(labels.items())
    return path


@pytest.mark.parametrize("export", [json_export, json_min_export])
def test_an_export_gives_the_labels_of_the_csv(export: Any, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "project-1-at-2026-12-05-12-31-0a1b2c3d.json"
    path.write_text(json.dumps(export()))
    with caplog.at_level(logging.INFO, "goggles.io.label_studio"):
        got = pairs(path)
    assert got == pairs(write_csv(tmp_path / "dev.csv", EXPECTED)) == set(EXPECTED.items())
    line, = [r.getMessage() for r in caplog.records if "Label Studio export" in r.getMessage()]
    if export is json_export:  # what was left out, in one line
        assert "5 labeled" in line and "1 skipped or cancelled" in line
        assert "1 not annotated" in line and "1 without a label" in line
        assert "8 predictions ignored" in line


def test_predictions_are_not_labels(tmp_path: Path) -> None:
    """The tasks as goggles writes them (predictions, no annotations) are refused: nothing
    there was labeled by a person."""
    tasks = [{"data": data(uri), "predictions": [{"model_version": "goggles", "score": 0.9,
                                                  "result": [region("alpha")]}]}
             for uri in URIS]
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps(tasks))
    with pytest.raises(ValueError, match="hold predictions only: label them in Label Studio"):
        read_dev_labels_table(str(path))


def test_several_choices_are_left_out(tmp_path: Path) -> None:
    tasks = json_export()[:2]
    tasks[0]["annotations"][0]["result"][0]["value"]["choices"] = ["alpha", "beta"]
    path = tmp_path / "e.json"
    path.write_text(json.dumps(tasks))
    assert pairs(path) == {(URIS[1], "beta")}


def test_the_image_is_found_without_goggles_uri() -> None:
    """Tasks made elsewhere: goggles' earlier ``uri`` key, Label Studio's local-files URL
    (unquoted, relative to the document root), a bucket URI as it was."""
    assert image_uri({"image": "/data/local-files/?d=a/img%200.png", "uri": "/x/a.png"}) == \
        "/x/a.png"
    assert image_uri({"image": "/data/local-files/?d=srv/images/a/img%200.png"}) == URIS[0]
    assert image_uri({"image": "http://localhost:8080/data/local-files/?d=a/b.png"}) == "/a/b.png"
    assert image_uri({"image": "gs://bucket/a/b.png"}) == "gs://bucket/a/b.png"
    assert image_uri({"text": "no image"}) is None


def test_urls_under_another_document_root_match_by_folder_and_name(tmp_path: Path) -> None:
    tasks = json_export()
    for item in tasks:
        del item["data"]["goggles_uri"]
    path = tmp_path / "e.json"
    path.write_text(json.dumps(tasks))
    positions, names = match_dev_labels(read_dev_labels_table(str(path)), URIS)
    assert {(URIS[i], name) for i, name in zip(positions, names, strict=True)} == \
        set(EXPECTED.items())


@pytest.mark.parametrize(("content", "message"), [
    ({"data": {}}, "not a Label Studio JSON export"),
    ("uri,label\n", "not a Label Studio JSON export"),
    ([{"image": "/a.png", "id": 1, "sentiment": "x"}], "has no 'choice', 'label' or 'other'"),
    ([task(1, data(URIS[0]), [annotation(1, 1, [], minute=1, cancelled=True)])],
     "none of the 1 items .* has a label; 1 skipped or cancelled"),
    ([task(1, {"img": URIS[0]}, [annotation(1, 1, [region("alpha")], minute=1)])],
     "1 without an image. Name each task's image in data.goggles_uri"),
])
def test_what_is_refused_names_the_fix(content: Any, message: str, tmp_path: Path) -> None:
    path = tmp_path / "e.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError, match=message):
        read_dev_labels_table(str(path))
