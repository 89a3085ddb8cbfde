"""cub-dev helpers shared by the benchmarks: the birds of :mod:`benchmarks.datasets` under the
names the benchmarks have always used (locating the data, drawing tasks the way the paper does,
§5.1, and the filter-map cache)."""

from __future__ import annotations

import numpy as np

from benchmarks import datasets
from benchmarks.datasets import HARD_PAIRS, Task, task_id  # noqa: F401  (re-exported)

CUB = datasets.CUB.root


def require_cub() -> datasets.Path:
    return datasets.CUB.require()


def species() -> list[str]:
    return datasets.CUB.classes()


def draw_tasks(seed: int = 0, binary: int = 10, multi: int = 6) -> list[Task]:
    return datasets.draw_tasks(datasets.CUB, seed, binary, multi)


def hard_tasks() -> list[Task]:
    return datasets.hard_tasks(datasets.CUB)


def images_of(classes: tuple[str, ...]) -> tuple[list[str], list[str]]:
    return datasets.CUB.images_of(classes)


def cached_maps(backbone: str = "vgg16", batch_size: int = 32,
                image_size: int = datasets.DEFAULT_SIZE) -> tuple[dict[str, np.ndarray], float]:
    """Filter maps of every cub-dev image, keyed by species (:func:`datasets.cached_maps`)."""
    return datasets.cached_maps(datasets.CUB, backbone, batch_size, image_size)
