"""Accuracy against labels per class (issue 26): the images the tool asks for (the report's list,
``goggles suggest``, round by round) beside the same number drawn at random within each class,
per task group, as a table and a PNG.

    python benchmarks/learning_curve.py [--tasks trash,hard,cifar,paper] [--per-class 0,2,5,10,20]
                                        [--seeds 1] [--png docs/learning-curve.png]

Each point is :func:`benchmarks.accuracy.run_task`'s accuracy on the images not labeled (named by
the labels; 0 labels: the accuracy without labels, clusters matched to classes by the Hungarian
algorithm), the mean over the group's tasks and ``--seeds`` inference seeds. Every point is kept
in ``$GOGGLES_BENCH_CACHE/learning-curve.json`` so a rerun computes only the missing ones.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import datasets  # noqa: E402
from benchmarks.accuracy import run_task  # noqa: E402
from benchmarks.datasets import task_id  # noqa: E402

GROUPS = {"trash": ("trash", "TrashNet 5 classes"), "hard": ("cub", "same-family birds"),
          "cifar": ("cifar", "CIFAR (pairs and 10-class)"), "paper": ("cub", "paper-style birds")}
MODES = {"report": "asked for by the tool", "even": "at random within each class"}
COLOURS = {"trash": (31, 119, 180), "hard": (214, 39, 40), "cifar": (44, 160, 44),
           "paper": (148, 103, 189)}


def group_tasks(group: str) -> tuple[datasets.Dataset, list[datasets.Task]]:
    dataset = datasets.DATASETS[GROUPS[group][0]]
    if group == "hard":
        return dataset, datasets.hard_tasks(dataset)
    if group == "paper":
        return dataset, datasets.draw_tasks(dataset, 0)
    return dataset, dataset.tasks(dataset, 0)


def point(group: str, per_class: int, mode: str, seeds: list[int],
          store: dict[str, float]) -> float:
    """Mean accuracy on the unlabeled images over the group's tasks and ``seeds``."""
    dataset, tasks = group_tasks(group)
    needed = sorted({c for t in tasks for c in t.classes})
    maps, per_image = datasets.cached_maps(dataset, "vgg16", classes=needed)
    second = datasets.cached_maps(dataset, "mobilenet_v2", classes=needed)[0]
    scores = []
    for task in tasks:
        for seed in seeds:
            key = f"{group}|{task_id(task)}|{per_class}|{mode if per_class else '-'}|{seed}"
            if key not in store:
                row = run_task(task, maps, per_image, seeds=[seed], top_k=5,
                               infer_overrides={}, second=second, dev_per_class=per_class,
                               dev_from=mode)
                store[key] = float(row["accuracy_others"])  # type: ignore[arg-type]
            scores.append(store[key])
    return float(np.mean(scores))


def draw(curves: dict[tuple[str, str], list[tuple[int, float]]], path: Path) -> None:
    """A line chart (PIL): accuracy against labels per class, solid for the tool's picks,
    dashed for labels drawn within each class."""
    from PIL import Image, ImageDraw

    width, height, left, bottom, top, right = 760, 460, 70, 60, 30, 230
    image = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(image)
    xs = sorted({x for points in curves.values() for x, _ in points}) or [0]
    low = min([y for points in curves.values() for _, y in points] + [1.0])
    y0 = max(0.0, np.floor(low * 10) / 10)

    def at(x: int, y: float) -> tuple[float, float]:
        u = left + (width - left - right) * (xs.index(x) / max(1, len(xs) - 1))
        v = height - bottom - (height - bottom - top) * (y - y0) / (1.0 - y0)
        return u, v

    pen.line([(left, top), (left, height - bottom), (width - right, height - bottom)],
             fill="black")
    for x in xs:
        u, v = at(x, y0)
        pen.text((u - 4, v + 8), str(x), fill="black")
    for tick in np.arange(y0, 1.0001, 0.1):
        u, v = at(xs[0], float(tick))
        pen.text((8, v - 6), f"{tick:.1f}", fill="black")
        pen.line([(left - 4, v), (left, v)], fill="black")
    pen.text((left + 120, height - 28), "labels per class", fill="black")
    pen.text((left, 8), "accuracy on the images not labeled", fill="black")
    legend = top
    for (group, mode), points in sorted(curves.items()):
        colour = COLOURS[group]
        line = [at(x, y) for x, y in sorted(points)]
        for a, b in zip(line, line[1:], strict=False):
            if mode == "report":
                pen.line([a, b], fill=colour, width=3)
            else:  # dashed
                for t in np.linspace(0, 1, 12)[::2]:
                    s = min(1.0, t + 1 / 11)
                    pen.line([(a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t),
                              (a[0] + (b[0] - a[0]) * s, a[1] + (b[1] - a[1]) * s)],
                             fill=colour, width=2)
        for u, v in line:
            pen.ellipse([u - 3, v - 3, u + 3, v + 3], fill=colour)
        pen.line([(width - right + 10, legend + 6), (width - right + 35, legend + 6)],
                 fill=colour, width=3 if mode == "report" else 1)
        pen.text((width - right + 40, legend), f"{GROUPS[group][1]}:", fill="black")
        pen.text((width - right + 40, legend + 12), MODES[mode], fill="black")
        legend += 32
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def save(cache: Path, store: dict[str, float]) -> None:
    """Merge ``store`` into the cache file (another run may have added points meanwhile)."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    merged = json.loads(cache.read_text()) if cache.exists() else {}
    merged.update(store)
    store.update(merged)
    temporary = cache.with_suffix(".tmp")
    temporary.write_text(json.dumps(merged, indent=1, sort_keys=True))
    temporary.replace(cache)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="trash,hard")
    parser.add_argument("--per-class", default="0,2,5,10,20")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--png", default="docs/learning-curve.png")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    groups = [g for g in args.tasks.split(",") if g]
    unknown = set(groups) - set(GROUPS)
    if unknown:
        parser.error(f"unknown task group(s) {sorted(unknown)}; choose from {sorted(GROUPS)}")
    counts = [int(n) for n in args.per_class.split(",")]
    seeds = list(range(args.seeds))
    cache = datasets.CACHE / "learning-curve.json"
    store: dict[str, float] = json.loads(cache.read_text()) if cache.exists() else {}
    curves: dict[tuple[str, str], list[tuple[int, float]]] = {}
    print(f"{'group':<28} {'labels from':<30}" + "".join(f"{n:>8}" for n in counts))
    for group in groups:
        for mode in MODES:
            values = []
            for n in counts:
                values.append(point(group, n, mode, seeds, store))
                save(cache, store)
            curves[(group, mode)] = list(zip(counts, values, strict=True))
            print(f"{GROUPS[group][1]:<28} {MODES[mode]:<30}"
                  + "".join(f"{v:>8.4f}" for v in values), flush=True)
    draw(curves, Path(args.png))
    print(f"learning curves: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
