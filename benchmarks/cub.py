"""cub-dev helpers shared by the benchmarks: locating the data, drawing tasks the way the paper
does (§5.1), and a filter-map cache so each image goes through the CNN once per backbone."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CUB = Path(os.environ.get("GOGGLES_CUB_DEV", ROOT.parent / "shared" / "data" / "cub-dev"))
CACHE = Path(os.environ.get("GOGGLES_BENCH_CACHE", Path.home() / ".cache" / "goggles-bench"))

# same-family pairs (issue 10): hard, fine-grained tasks
HARD_PAIRS = [("010", "012"), ("054", "057"), ("095", "098"), ("120", "123"), ("136", "138"),
              ("139", "140"), ("163", "176"), ("165", "166"), ("189", "192"), ("195", "198")]


def require_cub() -> Path:
    if not CUB.is_dir():
        sys.exit(f"cub-dev not found at {CUB}: set GOGGLES_CUB_DEV or put ../shared beside "
                 "the repository")
    return CUB


def species() -> list[str]:
    return sorted(p.name for p in require_cub().iterdir() if p.is_dir())


@dataclass(frozen=True)
class Task:
    name: str
    classes: tuple[str, ...]


def draw_tasks(seed: int = 0, binary: int = 10, multi: int = 6) -> list[Task]:
    """``binary`` random species pairs and ``multi`` random 3-5-class sets (two of each size),
    drawn with a fixed seed (paper §5.1)."""
    rng = np.random.default_rng(seed)
    names = species()
    tasks = []
    for _ in range(binary):
        pick = sorted(rng.choice(len(names), size=2, replace=False))
        tasks.append(Task("binary", tuple(names[i] for i in pick)))
    sizes = [3, 4, 5] * ((multi + 2) // 3)
    for size in sizes[:multi]:
        pick = sorted(rng.choice(len(names), size=size, replace=False))
        tasks.append(Task(f"{size}-class", tuple(names[i] for i in pick)))
    return tasks


def hard_tasks() -> list[Task]:
    names = species()
    by_id = {n.split(".")[0]: n for n in names}
    return [Task("hard", (by_id[a], by_id[b])) for a, b in HARD_PAIRS]


def task_id(task: Task) -> str:
    return "/".join(c.split(".")[0] for c in task.classes)


def images_of(classes: tuple[str, ...]) -> tuple[list[str], list[str]]:
    uris, labels = [], []
    for c in classes:
        for f in sorted((require_cub() / c).iterdir()):
            uris.append(str(f))
            labels.append(c)
    return uris, labels


def cached_maps(backbone: str = "vgg16",
                batch_size: int = 32) -> tuple[dict[str, np.ndarray], float]:
    """Filter maps of every cub-dev image, keyed by path, extracted once with the library and
    cached under ``CACHE``. Returns (maps by species, seconds per image of the extraction)."""
    from goggles.features.backbones import load_backbone
    from goggles.features.device import resolve_device
    from goggles.features.extraction import extract_filter_maps

    folder = CACHE / backbone
    folder.mkdir(parents=True, exist_ok=True)
    result: dict[str, np.ndarray] = {}
    per_image = []
    model = None
    for name in species():
        uris = [str(f) for f in sorted((CUB / name).iterdir())]
        key = hashlib.sha256("\n".join(uris).encode()).hexdigest()[:12]
        path = folder / f"{name}-{key}.npy"
        timing = folder / f"{name}-{key}.seconds"
        if not path.exists():
            if model is None:
                model, _ = load_backbone(backbone)
            chunks: list[np.ndarray] = []
            start = time.perf_counter()
            extract_filter_maps(uris, model, batch_size=batch_size, device=resolve_device("auto"),
                                on_batch=lambda s, m, chunks=chunks: chunks.append(m))
            elapsed = time.perf_counter() - start
            np.save(path, np.concatenate(chunks))
            timing.write_text(f"{elapsed / len(uris)}\n")
            logging.info("cached %s (%d images, %.2f s/img)", name, len(uris), elapsed / len(uris))
        result[name] = np.load(path)
        per_image.append(float(timing.read_text()))
    return result, float(np.mean(per_image))
