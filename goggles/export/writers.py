"""The export formats that are files and folders of images: torchvision's ImageFolder tree,
Hugging Face's ``imagefolder`` layout, and CSV / JSON Lines tables.

Each writer takes the :class:`Selected` rows and a destination folder URI and returns the
names (relative to the destination, ``/``-separated) of the files it wrote besides the images.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa

from goggles.export.naming import file_name, unique_names
from goggles.io import storage
from goggles.io.transfer import copy_or_link_many
from goggles.io.uris import is_local

logger = logging.getLogger(__name__)

COLUMNS = ("image_id", "uri", "label", "confidence", "probs")
"""The columns of the CSV and JSON Lines exports (and of ``metadata.jsonl`` beside
``file_name``): ``label`` is the class name, ``probs`` the probability of each cluster."""


@dataclass(frozen=True)
class Selected:
    """The exported images, in ``image_id`` order: their labels.parquet columns as lists."""

    image_id: list[int]
    uri: list[str]
    label: list[str]
    confidence: list[float]
    probs: list[list[float]]

    @classmethod
    def from_table(cls, labels: pa.Table) -> Selected:
        """From a labels table (:data:`goggles.io.artifacts.LABELS_SCHEMA`)."""
        labels = labels.sort_by("image_id")
        return cls(image_id=labels["image_id"].to_pylist(), uri=labels["uri"].to_pylist(),
                   label=labels["label_name"].to_pylist(),
                   confidence=labels["confidence"].to_pylist(),
                   probs=labels["probs"].to_pylist())

    def __len__(self) -> int:
        return len(self.image_id)

    def record(self, i: int) -> dict[str, object]:
        """Row ``i`` as :data:`COLUMNS`."""
        return {"image_id": self.image_id[i], "uri": self.uri[i], "label": self.label[i],
                "confidence": self.confidence[i], "probs": self.probs[i]}


def tree_paths(rows: Selected, folders: Mapping[str, str]) -> list[str]:
    """``<class folder>/<image file>`` of each row: the source's file name, or
    ``<image_id>-<name>`` where several images of one class share a name
    (:func:`goggles.export.naming.unique_names`)."""
    paths = [""] * len(rows)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, name in enumerate(rows.label):
        groups[folders[name]].append(i)
    for folder, members in groups.items():
        names = unique_names([rows.image_id[i] for i in members],
                             [file_name(rows.uri[i]) for i in members])
        for i, name in zip(members, names, strict=True):
            paths[i] = f"{folder}/{name}"
    return paths


def links(rows: Selected, dest: str, link: bool) -> bool:
    """Whether the images are linked: ``link`` asked for and both sides are local."""
    return link and is_local(dest) and all(is_local(uri) for uri in rows.uri)


def place_images(rows: Selected, dest: str, paths: list[str], *, link: bool) -> None:
    """Put each row's image at ``dest/<path>``: symlinks when :func:`links`, else copies."""
    symlink = links(rows, dest, link)
    pairs = [(uri, storage.join(dest, *path.split("/")))
             for uri, path in zip(rows.uri, paths, strict=True)]
    for _ in copy_or_link_many(pairs, symlink=symlink,
                               desc="linking images" if symlink else "copying images"):
        pass


def write_imagefolder(rows: Selected, dest: str, folders: Mapping[str, str], *,
                      link: bool) -> list[str]:
    """``dest/<class folder>/<image>``: what ``torchvision.datasets.ImageFolder(dest)`` reads
    (classes sorted by folder name; it skips ``.gif`` files unless told otherwise)."""
    paths = tree_paths(rows, folders)
    place_images(rows, dest, paths, link=link)
    gifs = sum(p.lower().endswith(".gif") for p in paths)
    if gifs:
        logger.warning("%d exported images are .gif, which torchvision's ImageFolder skips by "
                       "default; pass it is_valid_file=lambda path: True to read them", gifs)
    return []


def write_huggingface(rows: Selected, dest: str, folders: Mapping[str, str], *,
                      link: bool) -> list[str]:
    """Hugging Face's ``imagefolder`` layout: ``dest/train/<class folder>/<image>`` and
    ``dest/train/metadata.jsonl`` (``file_name`` relative to it, then :data:`COLUMNS`), which
    ``datasets.load_dataset("imagefolder", data_dir=dest)`` reads as one ``train`` split with
    the columns ``image`` and those of the metadata."""
    paths = tree_paths(rows, folders)
    place_images(rows, dest, [f"train/{p}" for p in paths], link=link)
    lines = [json.dumps({"file_name": path, **rows.record(i)})
             for i, path in enumerate(paths)]
    storage.write_text("".join(line + "\n" for line in lines),
                       storage.join(dest, "train", "metadata.jsonl"))
    return ["train/metadata.jsonl"]


def write_csv(rows: Selected, dest: str) -> list[str]:
    """``dest/labels.csv``: :data:`COLUMNS`, ``probs`` as a JSON list."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for i in range(len(rows)):
        writer.writerow([rows.image_id[i], rows.uri[i], rows.label[i], repr(rows.confidence[i]),
                         json.dumps(rows.probs[i])])
    storage.write_text(buffer.getvalue(), storage.join(dest, "labels.csv"))
    return ["labels.csv"]


def write_jsonl(rows: Selected, dest: str) -> list[str]:
    """``dest/labels.jsonl``: one JSON object of :data:`COLUMNS` per line."""
    text = "".join(json.dumps(rows.record(i)) + "\n" for i in range(len(rows)))
    storage.write_text(text, storage.join(dest, "labels.jsonl"))
    return ["labels.jsonl"]
