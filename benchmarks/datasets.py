"""The development datasets the benchmarks read in place (``../shared/data``): where each one
is, the labeling tasks drawn from it, and a filter-map cache so each image goes through a CNN
once per network and input size.

``cub`` (birds, the paper's domain: random species pairs and 3-5-class sets, §5.1, and
same-family pairs), ``cifar`` (CIFAR-10, 32x32: four class pairs and the 10-class task) and
``trash`` (TrashNet, 512x384 photographs of rubbish: the 5-class task).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CACHE = Path(os.environ.get("GOGGLES_BENCH_CACHE", Path.home() / ".cache" / "goggles-bench"))
DEFAULT_SIZE = 224  # the extract stage's input size; its maps keep the cache's original folders


@dataclass(frozen=True)
class Task:
    name: str
    classes: tuple[str, ...]


@dataclass(frozen=True)
class Dataset:
    """A folder of class folders under ``../shared/data`` (or ``$<env>``)."""

    name: str
    folder: str
    env: str
    tasks: Callable[[Dataset, int], list[Task]]

    @property
    def root(self) -> Path:
        return Path(os.environ.get(self.env, SHARED / self.folder))

    def require(self) -> Path:
        if not self.root.is_dir():
            sys.exit(f"{self.folder} not found at {self.root}: set {self.env} or put ../shared "
                     "beside the repository")
        return self.root

    def classes(self) -> list[str]:
        return sorted(p.name for p in self.require().iterdir() if p.is_dir())

    def files(self, name: str) -> list[str]:
        return [str(f) for f in sorted((self.require() / name).iterdir())]

    def images_of(self, classes: tuple[str, ...]) -> tuple[list[str], list[str]]:
        uris, labels = [], []
        for c in classes:
            files = self.files(c)
            uris += files
            labels += [c] * len(files)
        return uris, labels


def task_id(task: Task) -> str:
    return "/".join(c.split(".")[0] for c in task.classes)


# -- the tasks of each dataset -------------------------------------------------------------------

def draw_tasks(dataset: Dataset, seed: int = 0, binary: int = 10, multi: int = 6) -> list[Task]:
    """``binary`` random class pairs and ``multi`` random 3-5-class sets (two of each size),
    drawn with a fixed seed (paper §5.1)."""
    rng = np.random.default_rng(seed)
    names = dataset.classes()
    tasks = []
    for _ in range(binary):
        pick = sorted(rng.choice(len(names), size=2, replace=False))
        tasks.append(Task("binary", tuple(names[i] for i in pick)))
    sizes = [3, 4, 5] * ((multi + 2) // 3)
    for size in sizes[:multi]:
        pick = sorted(rng.choice(len(names), size=size, replace=False))
        tasks.append(Task(f"{size}-class", tuple(names[i] for i in pick)))
    return tasks


# same-family bird pairs (issue 10): hard, fine-grained tasks
HARD_PAIRS = [("010", "012"), ("054", "057"), ("095", "098"), ("120", "123"), ("136", "138"),
              ("139", "140"), ("163", "176"), ("165", "166"), ("189", "192"), ("195", "198")]


def hard_tasks(dataset: Dataset, seed: int = 0) -> list[Task]:
    by_id = {n.split(".")[0]: n for n in dataset.classes()}
    return [Task("hard", (by_id[a], by_id[b])) for a, b in HARD_PAIRS]


CIFAR_PAIRS = [("cat", "dog"), ("airplane", "ship"), ("automobile", "truck"), ("deer", "horse")]


def cifar_tasks(dataset: Dataset, seed: int = 0) -> list[Task]:
    """The four look-alike pairs of issue 16 and all ten classes."""
    return ([Task("pair", pair) for pair in CIFAR_PAIRS]
            + [Task("10-class", tuple(dataset.classes()))])


def every_class(dataset: Dataset, seed: int = 0) -> list[Task]:
    names = dataset.classes()
    return [Task(f"{len(names)}-class", tuple(names))]


CUB = Dataset("cub", "cub-dev", "GOGGLES_CUB_DEV", draw_tasks)
CIFAR = Dataset("cifar", "cifar10-dev", "GOGGLES_CIFAR_DEV", cifar_tasks)
TRASH = Dataset("trash", "trash-dev", "GOGGLES_TRASH_DEV", every_class)
DATASETS = {d.name: d for d in (CUB, CIFAR, TRASH)}


# -- the filter-map cache ------------------------------------------------------------------------

def cached_maps(dataset: Dataset, backbone: str = "vgg16", batch_size: int = 32,
                image_size: int = DEFAULT_SIZE, classes: Sequence[str] | None = None
                ) -> tuple[dict[str, np.ndarray], float]:
    """Filter maps of every image of ``dataset`` (or of its ``classes``), keyed by class folder,
    extracted once with the library at ``image_size`` and cached under ``CACHE`` (one file per
    class, named by a digest of its paths). Returns (maps by class, seconds per image of the
    extraction)."""
    from goggles.features.backbones import load_backbone
    from goggles.features.device import resolve_device
    from goggles.features.extraction import extract_filter_maps

    folder = CACHE / (backbone if image_size == DEFAULT_SIZE else f"{backbone}-{image_size}px")
    folder.mkdir(parents=True, exist_ok=True)
    result: dict[str, np.ndarray] = {}
    per_image = []
    model = None
    for name in (dataset.classes() if classes is None else classes):
        uris = dataset.files(name)
        key = hashlib.sha256("\n".join(uris).encode()).hexdigest()[:12]
        path = folder / f"{name}-{key}.npy"
        timing = folder / f"{name}-{key}.seconds"
        if not path.exists():
            if model is None:
                model, _ = load_backbone(backbone)
            chunks: list[np.ndarray] = []
            start = time.perf_counter()
            extract_filter_maps(uris, model, image_size=image_size, batch_size=batch_size,
                                device=resolve_device("auto"),
                                on_batch=lambda s, m, chunks=chunks: chunks.append(m))
            elapsed = time.perf_counter() - start
            np.save(path, np.concatenate(chunks))
            timing.write_text(f"{elapsed / len(uris)}\n")
            logging.info("cached %s/%s (%d images, %.2f s/img)", dataset.name, name, len(uris),
                         elapsed / len(uris))
        result[name] = np.load(path)
        per_image.append(float(timing.read_text()))
    return result, float(np.mean(per_image))
