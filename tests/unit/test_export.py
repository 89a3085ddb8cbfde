"""goggles export on a small synthetic run (labels.parquet and a manifest written with the
artifact helpers, tiny PNGs, no CNN): every format read back by the tool it is for —
torchvision's ImageFolder, ``datasets.load_dataset("imagefolder")``, Label Studio's documented
import fields, CSV and JSON parsers — and the checks that keep an export from mixing into a
run or an earlier export."""

from __future__ import annotations

import csv
import json
import os
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from goggles.cli import main
from goggles.config import ConfigError
from goggles.export import FORMATS, export_labels
from goggles.export.labelstudio import image_url
from goggles.export.naming import class_folders, safe_component, unique_names
from goggles.io import storage
from goggles.io.artifacts import MANIFEST_SCHEMA, labels_table, output_paths

CLASSES = ("alpha", "beta", "gamma")
PER_FOLDER = 4


def make_run(root: Path, names: tuple[str, ...] = CLASSES, seed: int = 0) -> tuple[str, str]:
    """A finished run's OUT with labels.parquet, manifest.parquet and metrics.json, over
    ``root/source/<class>/<x|y>/img<i>.png`` (the same file names in x and y); returns (OUT,
    source). The labels agree with the folders but for a few, with confidences spread over
    [0.34, 1)."""
    rng = np.random.default_rng(seed)
    source = root / "source"
    uris, truth = [], []
    for k, name in enumerate(CLASSES):
        for sub in ("x", "y"):
            for i in range(PER_FOLDER):
                path = source / name / sub / f"img{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                pixels = rng.integers(0, 255, size=(6, 8, 3), dtype=np.uint8)
                pixels[..., k] = 255
                Image.fromarray(pixels).save(path)
                uris.append(str(path))
                truth.append(name)
    n, k = len(uris), len(names)
    label = np.array([CLASSES.index(t) for t in truth]) % k
    label[::7] = (label[::7] + 1) % k  # a few wrong
    top = np.linspace(0.999, 1.0 / k + 0.01, n)[rng.permutation(n)]
    probs = np.full((n, k), 0.0)
    probs[np.arange(n)] = ((1 - top) / (k - 1))[:, None]
    probs[np.arange(n), label] = top
    out = root / "out"
    paths = output_paths(str(out))
    rows = pa.table({"image_id": pa.array(np.arange(n), pa.int64()), "uri": uris})
    storage.write_parquet(labels_table(rows, probs, list(names)), paths["labels"])
    storage.write_parquet(pa.table({
        "image_id": np.arange(n), "uri": uris, "sha256": [""] * n, "width": [8] * n,
        "height": [6] * n, "label": truth, "status": ["accepted"] * n, "error": [None] * n,
    }, schema=MANIFEST_SCHEMA), paths["manifest"])
    storage.write_json({"method": "graph-em", "source_uri": str(source)}, paths["metrics"])
    return str(out), str(source)


def read_labels(out: str) -> dict[str, dict]:
    """uri -> its labels.parquet row."""
    table = storage.read_parquet(output_paths(out)["labels"])
    return {row["uri"]: row for row in table.to_pylist()}


def _target(path: str | Path) -> str:
    """The file the symlink ``path`` names, as an absolute path (links are relative)."""
    return os.path.normpath(os.path.join(os.path.dirname(path), os.readlink(path)))


@pytest.fixture
def run(tmp_path: Path) -> tuple[str, str]:
    return make_run(tmp_path)


# -- imagefolder ----------------------------------------------------------------------------------

def test_imagefolder_is_read_back_by_torchvision(run: tuple[str, str], tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder

    out, _ = run
    dest = tmp_path / "tree"
    summary = export_labels(out, str(dest), "imagefolder")
    labels = read_labels(out)
    dataset = ImageFolder(str(dest))
    assert dataset.classes == sorted(CLASSES)
    assert len(dataset) == summary.written == len(labels) and summary.skipped == 0
    for path, target in dataset.samples:  # each image under the class labels.parquet gives it
        assert os.path.islink(path)
        assert dataset.classes[target] == labels[_target(path)]["label_name"]
    image, _ = dataset[0]
    assert image.size == (8, 6)
    assert summary.linked and summary.per_class == {
        name: sum(r["label_name"] == name for r in labels.values()) for name in CLASSES}
    record = json.loads((dest / "export.json").read_text())
    assert record["written"] == len(labels) and record["format"] == "imagefolder"
    assert record["probs_order"] == list(CLASSES)


def test_imagefolder_copies_on_request_and_names_collisions_by_image_id(
        run: tuple[str, str], tmp_path: Path) -> None:
    out, _ = run
    labels = storage.read_parquet(output_paths(out)["labels"]).to_pylist()
    dest = tmp_path / "copied"
    summary = export_labels(out, str(dest), "imagefolder", link=False)
    assert not summary.linked
    files = sorted(p for p in dest.rglob("*.png"))
    assert len(files) == len(labels) and not any(p.is_symlink() for p in files)
    for row in labels:  # x/img0.png and y/img0.png of one class share a name: both get the id
        folder = dest / row["label_name"]
        name = Path(row["uri"]).name
        same = [r for r in labels if Path(r["uri"]).name == name
                and r["label_name"] == row["label_name"]]
        expected = folder / (name if len(same) == 1 else f"{row['image_id']}-{name}")
        assert expected.read_bytes() == Path(row["uri"]).read_bytes()
    again = tmp_path / "again"
    export_labels(out, str(again), "imagefolder", link=False)
    assert sorted(p.relative_to(again) for p in again.rglob("*.png")) == \
        [p.relative_to(dest) for p in files]  # deterministic


def test_unique_names_depend_on_the_items_not_their_order() -> None:
    ids, names = [5, 3, 9, 4], ["a.png", "A.png", "b.png", "3-a.png"]
    named = dict(zip(ids, unique_names(ids, names), strict=True))
    assert named[9] == "b.png"
    assert len({n.casefold() for n in named.values()}) == 4  # case-blind file systems too
    order = [2, 0, 3, 1]
    again = unique_names([ids[i] for i in order], [names[i] for i in order])
    assert dict(zip([ids[i] for i in order], again, strict=True)) == named


@pytest.mark.parametrize(("name", "safe"), [
    ("cats/dogs", "cats_dogs"), ("..", "_.."), (".", "_."), ("", "_"), ("  ", "_"),
    (".hidden", "_.hidden"), ("__pycache__", "_pycache__"), ("a\\b\x00c\nd", "a_b_c_d"),
    ("Étoile", "Étoile"),
])
def test_safe_component(name: str, safe: str) -> None:
    assert safe_component(name) == safe


def test_long_names_are_cut_keeping_the_suffix() -> None:
    cut = safe_component("é" * 300 + ".png")
    assert cut.endswith(".png") and len(cut.encode()) <= 200
    cut.encode().decode()  # no broken character


def test_unsafe_class_names_become_distinct_safe_folders(tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder

    names = ("../up", "..", "Cat")
    out, _ = make_run(tmp_path, names)
    folders = class_folders(["a/b", "a_b", "Cat", "cat", ""])
    assert len({f.casefold() for f in folders.values()}) == 5
    assert all("/" not in f and f not in ("", ".", "..") for f in folders.values())
    dest = tmp_path / "tree"
    summary = export_labels(out, str(dest), "imagefolder")
    assert summary.folders == {"..": "_..", "../up": "_.._up", "Cat": "Cat"}
    assert sorted(p.name for p in dest.iterdir() if p.is_dir()) == sorted(summary.folders.values())
    assert not (tmp_path / "up").exists()
    dataset = ImageFolder(str(dest))
    labels = read_labels(out)
    by_folder = {folder: name for name, folder in summary.folders.items()}
    for path, target in dataset.samples:
        assert by_folder[dataset.classes[target]] == labels[_target(path)]["label_name"]


# -- the confidence threshold ---------------------------------------------------------------------

@pytest.mark.parametrize("threshold", [0.5, 0.9, 1.0])
def test_min_confidence_keeps_only_labels_at_least_that_sure(run: tuple[str, str],
                                                             tmp_path: Path,
                                                             threshold: float) -> None:
    out, _ = run
    labels = read_labels(out)
    dest = tmp_path / "kept"
    summary = export_labels(out, str(dest), "jsonl", min_confidence=threshold)
    kept = [json.loads(line) for line in (dest / "labels.jsonl").read_text().splitlines()]
    expected = sorted(r["image_id"] for r in labels.values() if r["confidence"] >= threshold)
    assert [r["image_id"] for r in kept] == expected
    assert summary.written == len(expected) and summary.skipped == len(labels) - len(expected)
    assert sum(summary.per_class.values()) == len(expected)
    assert list(summary.per_class) == list(CLASSES)  # every class named, 0 included
    if summary.skipped:
        assert f"{summary.skipped} below confidence {threshold:g} left out" in summary.line()


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan")])
def test_min_confidence_outside_0_1_is_refused(run: tuple[str, str], tmp_path: Path,
                                               threshold: float) -> None:
    with pytest.raises(ConfigError, match="not a probability"):
        export_labels(run[0], str(tmp_path / "x"), "csv", min_confidence=threshold)


# -- tables ---------------------------------------------------------------------------------------

def test_csv_and_jsonl_read_back_exactly(run: tuple[str, str], tmp_path: Path) -> None:
    out, _ = run
    labels = read_labels(out)
    export_labels(out, str(tmp_path / "csv"), "csv")
    export_labels(out, str(tmp_path / "jsonl"), "jsonl")
    with open(tmp_path / "csv" / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["image_id", "uri", "label", "confidence", "probs"]
    lines = [json.loads(x) for x in (tmp_path / "jsonl" / "labels.jsonl").read_text().splitlines()]
    assert len(rows) == len(lines) == len(labels)
    for row, line in zip(rows, lines, strict=True):
        want = labels[row["uri"]]
        assert int(row["image_id"]) == line["image_id"] == want["image_id"]
        assert row["label"] == line["label"] == want["label_name"]
        assert float(row["confidence"]) == line["confidence"] == want["confidence"]
        assert json.loads(row["probs"]) == line["probs"] == want["probs"]


# -- Hugging Face ---------------------------------------------------------------------------------

def test_huggingface_layout_file_by_file(run: tuple[str, str], tmp_path: Path) -> None:
    """The layout datasets documents for imagefolder with metadata: images under the split
    folder, metadata.jsonl beside them whose file_name is relative to it."""
    out, _ = run
    labels = read_labels(out)
    dest = tmp_path / "hf"
    export_labels(out, str(dest), "huggingface")
    lines = [json.loads(x) for x in (dest / "train" / "metadata.jsonl").read_text().splitlines()]
    assert len(lines) == len(labels)
    for line in lines:
        assert set(line) == {"file_name", "image_id", "uri", "label", "confidence", "probs"}
        image = dest / "train" / line["file_name"]
        assert image.is_file() and _target(image) == line["uri"]
        assert line["file_name"].split("/")[0] == line["label"] == labels[line["uri"]]["label_name"]


def test_huggingface_export_is_read_back_by_datasets(run: tuple[str, str], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out, _ = run
    labels = {r["image_id"]: r for r in read_labels(out).values()}
    dest = tmp_path / "hf"
    export_labels(out, str(dest), "huggingface", link=False, min_confidence=0.5)
    loaded = datasets.load_dataset("imagefolder", data_dir=str(dest),
                                   cache_dir=str(tmp_path / "cache"))
    train = loaded["train"]
    kept = {i for i, r in labels.items() if r["confidence"] >= 0.5}
    assert sorted(train["image_id"]) == sorted(kept)
    for item in train:
        want = labels[item["image_id"]]
        assert item["label"] == want["label_name"] and item["uri"] == want["uri"]
        assert item["confidence"] == want["confidence"] and item["probs"] == want["probs"]
        assert item["image"].size == (8, 6)


# -- Label Studio ---------------------------------------------------------------------------------

def test_label_studio_tasks_carry_the_documented_import_fields(run: tuple[str, str],
                                                               tmp_path: Path) -> None:
    """Label Studio's "Import pre-annotated data": a list of tasks, each ``data`` with the key
    the config's Image reads (``$image``), ``predictions`` with ``model_version``, ``score`` and
    ``result`` items whose from_name/to_name/type match the config's control and object, a
    distinct ``id`` each, and ``value.choices`` among the config's Choice values."""
    out, source = run
    labels = read_labels(out)
    dest = tmp_path / "ls"
    export_labels(out, str(dest), "label-studio", label_studio_root=str(tmp_path))
    config = ET.fromstring((dest / "labeling-config.xml").read_text())
    assert config.tag == "View"
    image, = config.iter("Image")
    choices, = config.iter("Choices")
    values = [c.get("value") for c in choices.iter("Choice")]
    assert values == list(CLASSES)
    assert image.get("value", "").startswith("$") and choices.get("toName") == image.get("name")
    tasks = json.loads((dest / "tasks.json").read_text())
    assert isinstance(tasks, list) and len(tasks) == len(labels)
    ids = []
    for task in tasks:
        url = task["data"][image.get("value", "")[1:]]
        assert url.startswith("/data/local-files/?d=")
        path = tmp_path / unquote(url.split("?d=", 1)[1])
        want = labels[str(path)]
        prediction, = task["predictions"]
        assert prediction["model_version"] == "goggles 0.1.0 graph-em"
        assert prediction["score"] == want["confidence"]
        result, = prediction["result"]
        assert result["from_name"] == choices.get("name")
        assert result["to_name"] == choices.get("toName") == image.get("name")
        assert result["type"] == "choices"
        assert result["value"] == {"choices": [want["label_name"]]}
        assert result["value"]["choices"][0] in values
        ids.append(result["id"])
    assert len(set(ids)) == len(ids)


def test_label_studio_urls() -> None:
    assert image_url("/data/imgs/a b#1.png", "/data") == "/data/local-files/?d=imgs/a%20b%231.png"
    assert image_url("/data/imgs/a.png") == "/data/local-files/?d=data/imgs/a.png"
    assert image_url("gs://bucket/imgs/a.png", "/data") == "gs://bucket/imgs/a.png"
    with pytest.raises(ValueError, match="outside the Label Studio document root"):
        image_url("/elsewhere/a.png", "/data")


def test_label_studio_config_escapes_class_names() -> None:
    from goggles.export.labelstudio import labeling_config

    config = ET.fromstring(labeling_config(['a "quoted" <b>', "c&d"]))
    assert [c.get("value") for c in config.iter("Choice")] == ['a "quoted" <b>', "c&d"]


def test_only_the_suggested_images_are_exported_to_label_studio(
        run: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--only FILE`` (what ``goggles suggest --output`` writes: ``uri`` and an empty
    ``label``): a task per listed image, its current label as the prediction, its URI kept in
    ``data.goggles_uri``; the config offers every class of the run and a text box."""
    out, _ = run
    labels = read_labels(out)
    listed = sorted(labels)[1::5]
    only = tmp_path / "suggested.csv"
    only.write_text("uri,label\n" + "".join(f"{uri},\n" for uri in [*listed, listed[0]]))
    dest = tmp_path / "ls"
    assert main(["export", out, "--format", "label-studio", "--output", str(dest),
                 "--only", str(only), "--label-studio-root", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert f"exported {len(listed)} of {len(listed)} images" in printed and str(only) in printed
    tasks = json.loads((dest / "tasks.json").read_text())
    assert sorted(t["data"]["goggles_uri"] for t in tasks) == listed
    for item in tasks:
        uri = item["data"]["goggles_uri"]
        assert item["data"]["image"] == image_url(uri, str(tmp_path))
        choice, = item["predictions"][0]["result"]
        assert choice["value"]["choices"] == [labels[uri]["label_name"]]
    config = ET.fromstring((dest / "labeling-config.xml").read_text())
    assert [c.get("value") for c in config.iter("Choice")] == list(CLASSES)
    text, = config.iter("TextArea")
    assert text.get("name") == "other" and text.get("toName") == "image"
    assert json.loads((dest / "export.json").read_text())["only"] == str(only)


def test_only_reads_parquet_and_refuses_a_list_it_cannot_use(run: tuple[str, str],
                                                             tmp_path: Path) -> None:
    out, _ = run
    uris = sorted(read_labels(out))[:3]
    storage.write_parquet(pa.table({"uri": uris}), str(tmp_path / "s.parquet"))
    summary = export_labels(out, str(tmp_path / "d"), "csv", only=str(tmp_path / "s.parquet"))
    assert summary.written == 3
    with (tmp_path / "d" / "labels.csv").open() as handle:
        assert sorted(row["uri"] for row in csv.DictReader(handle)) == uris
    (tmp_path / "no-uri.csv").write_text("path,label\n/a.png,\n")
    (tmp_path / "elsewhere.csv").write_text("uri,label\n/nowhere/x/a.png,\n")
    for name, message in (("no-uri.csv", "has no uri column"),
                          ("elsewhere.csv", "none of the 1 rows of --only")):
        with pytest.raises(ConfigError, match=message):
            export_labels(out, str(tmp_path / name.split(".")[0]), "label-studio",
                          only=str(tmp_path / name))
        assert not (tmp_path / name.split(".")[0]).exists()


# -- what is refused ------------------------------------------------------------------------------

def test_refusals(run: tuple[str, str], tmp_path: Path) -> None:
    out, source = run
    cases = {
        out: "is the run's output or holds it",
        str(tmp_path): "is the run's output or holds it",
        os.path.join(out, "artifacts", "x"): "lies in the run's artifacts",
        os.path.join(source, "alpha", "export"): "lies in the run's source",
        "http://example.com/x": "protocol is not accepted",
        "s3://key:secret@bucket/x": "credentials in a URI are not accepted",
    }
    for dest, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            export_labels(out, dest, "csv")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("keep me")
    with pytest.raises(ConfigError, match=r"is not empty \(1 files, e.g. mine.txt\)"):
        export_labels(out, str(busy), "imagefolder")
    assert [p.name for p in busy.iterdir()] == ["mine.txt"]
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        export_labels(out, str(tmp_path / "file"), "csv")
    with pytest.raises(ConfigError, match="unknown format"):
        export_labels(out, str(tmp_path / "new"), "coco")
    with pytest.raises(ValueError, match="no labels under"):
        export_labels(str(tmp_path / "nothing"), str(tmp_path / "new"), "csv")
    assert not (tmp_path / "new").exists()


def test_an_export_into_its_own_earlier_dest_is_refused(run: tuple[str, str],
                                                        tmp_path: Path) -> None:
    out, _ = run
    export_labels(out, str(tmp_path / "d"), "imagefolder")
    with pytest.raises(ConfigError, match="is not empty"):
        export_labels(out, str(tmp_path / "d"), "imagefolder", min_confidence=0.9)


def test_out_may_be_the_labels_file_itself(run: tuple[str, str], tmp_path: Path) -> None:
    out, _ = run
    summary = export_labels(output_paths(out)["labels"], str(tmp_path / "d"), "label-studio")
    assert summary.written == 3 * 2 * PER_FOLDER
    task = json.loads((tmp_path / "d" / "tasks.json").read_text())[0]
    assert task["predictions"][0]["model_version"] == "goggles 0.1.0"  # no metrics.json read


def test_a_dangling_source_is_named(run: tuple[str, str], tmp_path: Path) -> None:
    out, source = run
    gone = Path(source) / "beta" / "x" / "img1.png"
    gone.unlink()
    with pytest.raises(storage.MissingObjectError, match="img1.png"):
        export_labels(out, str(tmp_path / "d"), "imagefolder")


def test_memory_dest_gets_copies(run: tuple[str, str]) -> None:
    out, _ = run
    labels = read_labels(out)
    dest = f"memory://export-{uuid.uuid4().hex[:8]}/tree"
    summary = export_labels(out, dest, "imagefolder")
    assert not summary.linked and summary.written == len(labels)
    for row in labels.values():
        name = Path(row["uri"]).name
        written = [p for p in storage.filesystem(dest)[0].find(storage.filesystem(dest)[1])
                   if p.endswith(name) and f"/{row['label_name']}/" in p]
        assert written  # under its class
    assert storage.read_json(f"{dest}/export.json")["written"] == len(labels)


# -- the command ----------------------------------------------------------------------------------

def test_goggles_export_prints_one_line(run: tuple[str, str], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = run
    dest = str(tmp_path / "d")
    assert main(["export", out, "--format", "imagefolder", "--output", dest, "--copy",
                 "--min-confidence", "0.8"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith("exported ")
    assert f"as imagefolder to {dest}:" in printed[0]
    assert not any(p.is_symlink() for p in Path(dest).rglob("*.png"))
    assert main(["export", out, "--format", "csv", "--output", dest]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("goggles: error: DEST")
    assert "not empty" in error[0]


def test_links_are_relative_and_the_command_says_they_are_links(
        run: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A linked tree moved together with its images still resolves, and the one printed line
    says plainly that the images are links, not copies."""
    import shutil

    out, source = run
    dest = tmp_path / "tree"
    assert main(["export", out, "--format", "imagefolder", "--output", str(dest)]) == 0
    printed = capsys.readouterr()
    lines = printed.out.strip().splitlines()
    assert len(lines) == 1 and "symlinks" in lines[0] and "--copy" in lines[0]
    assert lines[0] not in printed.err  # printed once, not logged as well
    images = [p for p in dest.rglob("*") if p.is_symlink()]
    assert images and all(not os.path.isabs(os.readlink(p)) for p in images)
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(str(dest), moved / "tree")
    shutil.move(source, moved / Path(source).name)
    assert all((moved / "tree" / p.relative_to(dest)).read_bytes() for p in images)


def test_names_rename_classes_in_the_export_without_a_rerun(
        run: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = run
    before = read_labels(out)
    mapping = {CLASSES[0]: "tabby", CLASSES[1]: "hound"}
    dest = tmp_path / "named.csv.d"
    flag = ",".join(f"{old}={new}" for old, new in mapping.items())
    assert main(["export", out, "--format", "csv", "--output", str(dest), "--names", flag]) == 0
    rows = list(csv.DictReader((dest / "labels.csv").open()))
    assert [r["label"] for r in rows] == [
        mapping.get(before[r["uri"]]["label_name"], before[r["uri"]]["label_name"])
        for r in rows]
    assert read_labels(out) == before  # the run is unchanged
    names_file = tmp_path / "names.txt"
    names_file.write_text("\n".join(f"{old}={new}" for old, new in mapping.items()) + "\n")
    tree = tmp_path / "tree"
    assert main(["export", out, "--format", "imagefolder", "--output", str(tree), "--copy",
                 "--names", str(names_file)]) == 0
    assert {p.name for p in tree.iterdir() if p.is_dir()} >= {"tabby", "hound"}
    capsys.readouterr()
    assert main(["export", out, "--format", "csv", "--output", str(tmp_path / "x"),
                 "--names", "cluster_9=owl"]) == 2
    error = capsys.readouterr().err
    assert "cluster_9 is not a class of this run" in error and CLASSES[0] in error


def test_every_format_is_offered_by_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = capsys.readouterr().out
    assert all(fmt in text for fmt in FORMATS)


def test_copy_within_one_store_and_links_replace_atomically(tmp_path: Path) -> None:
    from goggles.io.transfer import copy_object, link

    base = f"memory://transfer-{uuid.uuid4().hex[:8]}"
    storage.write_bytes(f"{base}/a.bin", b"abc")
    copy_object(f"{base}/a.bin", f"{base}/sub/b.bin")  # a server-side copy in one store
    assert storage.read_bytes(f"{base}/sub/b.bin") == b"abc"
    (tmp_path / "one").write_text("1")
    (tmp_path / "two").write_text("2")
    link(str(tmp_path / "one"), str(tmp_path / "d" / "x"))
    link(str(tmp_path / "two"), str(tmp_path / "d" / "x"))  # replaces the link
    assert (tmp_path / "d" / "x").read_text() == "2" and os.listdir(tmp_path / "d") == ["x"]
    with pytest.raises(ValueError, match="links are local only"):
        link(str(tmp_path / "one"), f"{base}/c")


@pytest.mark.slow
def test_an_in_process_run_with_relative_paths_exports_from_another_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process runner records absolute URIs (as the Kubeflow runners do): an export from
    another working directory finds the images, and still refuses a DEST inside the source."""
    from goggles.parameters import RunParameters
    from goggles.pipeline.inprocess import run_inprocess
    from tests.unit.test_resume import bmp_source

    work = tmp_path / "work"
    bmp_source(work / "in", 6)
    monkeypatch.chdir(work)
    run_inprocess(RunParameters(source_uri="in", output_uri="out", num_classes=2,
                                method="kmeans", backbone="mobilenet_v2",
                                descriptor_backbone="none", top_k=2, device="cpu"))
    out = work / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["source_uri"] == str(work / "in")
    assert all(uri.startswith(str(work / "in") + "/") for uri in read_labels(str(out)))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    export_labels(str(out), str(tmp_path / "dest"), "imagefolder", link=False)
    assert len(list((tmp_path / "dest").rglob("*.bmp"))) == 6
    with pytest.raises(ConfigError, match="lies in the run's source"):
        export_labels(str(out), str(work / "in" / "export"), "csv")
