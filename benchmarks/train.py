"""The end model on cub-dev: trained on goggles' labels against the supervised upper bound.

    python benchmarks/train.py [--tasks paper|hard|all] [--head linear|mlp] [--seed 0]

For each task drawn as benchmarks/accuracy.py draws them (10 species pairs, 6 tasks of 3-5
species; ``--tasks hard`` the same-family pairs), the run's artifacts are made with the
library's own functions from the cached filter maps (VGG-16 prototypes and A, the bilinear
descriptors of VGG-16 and MobileNetV2, graph EM's posteriors), and the train stage's scoring
(:func:`goggles.training.train.train_end_model`) holds out a seeded third of the images,
stratified by label, and trains the same head three times on the rest: on the posteriors with
eq. 1's noise-aware loss (``soft``), on their arg-max (``hard``) and on the true classes
(``supervised``, the upper bound). Accuracy is on the held-out images against the truth after
the evaluation's Hungarian matching. ``ratio`` = soft / supervised; ``labels`` is the accuracy
of goggles' own labels on the same held-out images; ``train_s`` is the whole train stage on the
CPU (three scored heads and the final one). No hyper-parameter was chosen on these tasks' truth
(docs/training.md says how they were chosen).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cub import Task, cached_maps, draw_tasks, hard_tasks, task_id  # noqa: E402
from goggles.features.affinity import affinity_block  # noqa: E402
from goggles.features.descriptors import bilinear_descriptors  # noqa: E402
from goggles.features.prototypes import select_prototypes  # noqa: E402
from goggles.inference.config import InferConfig  # noqa: E402
from goggles.inference.registry import fit_method  # noqa: E402
from goggles.training.config import TrainConfig  # noqa: E402
from goggles.training.train import train_end_model  # noqa: E402

TARGET = 0.97


def run_task(task: Task, vgg: dict[str, np.ndarray], second: dict[str, np.ndarray] | None,
             config: TrainConfig) -> dict[str, object]:
    maps = np.concatenate([vgg[c] for c in task.classes])
    truth = [c for c in task.classes for _ in range(len(vgg[c]))]
    descriptors = [bilinear_descriptors(maps)]
    if second is not None:
        descriptors.append(bilinear_descriptors(np.concatenate([second[c]
                                                                for c in task.classes])))
    prototypes = select_prototypes(maps, np.arange(len(maps)), 5)
    affinity = affinity_block(maps, prototypes.vectors)
    model = fit_method(InferConfig(num_classes=len(task.classes), seed=config.seed), affinity,
                       prototypes.image_id, descriptors=descriptors)
    assert model.posteriors_ is not None
    start = time.perf_counter()
    _, scores = train_end_model(descriptors, model.posteriors_, truth, config)
    seconds = time.perf_counter() - start
    return {"task": task.name, "classes": task_id(task), "n": len(maps), **scores,
            "train_s": seconds}


def print_table(rows: list[dict[str, object]]) -> None:
    header = (f"{'task':<8} {'classes':<20} {'N':>4} {'held':>4} {'labels':>7} {'soft':>7} "
              f"{'hard':>7} {'superv':>7} {'ratio':>6} {'train_s':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['task']:<8} {r['classes']:<20} {r['n']:>4} {r['n_holdout']:>4} "
              f"{r['label_accuracy']:>7.4f} {r['accuracy']:>7.4f} "
              f"{r['hard_label_accuracy']:>7.4f} {r['supervised_accuracy']:>7.4f} "
              f"{r['ratio_to_supervised']:>6.4f} {r['train_s']:>7.2f}")


def summarise(rows: list[dict[str, object]]) -> bool:
    groups = {"pairs": [r for r in rows if r["task"] == "binary"],
              "multi-class": [r for r in rows if str(r["task"]).endswith("-class")],
              "same-family": [r for r in rows if r["task"] == "hard"]}
    print()
    met = True
    for name, group in groups.items():
        if not group:
            continue

        def mean(key: str, group: list[dict[str, object]] = group) -> float:
            return float(np.mean([float(r[key]) for r in group]))  # type: ignore[arg-type]

        ratio = mean("ratio_to_supervised")
        verdict = "" if name == "same-family" else (
            f"  (target >= {TARGET}: {'met' if ratio >= TARGET else 'NOT met'})")
        if name != "same-family":
            met = met and ratio >= TARGET
        print(f"mean {name:<11} ({len(group):>2} tasks): soft labels {mean('accuracy'):.4f}, "
              f"hard labels {mean('hard_label_accuracy'):.4f}, supervised "
              f"{mean('supervised_accuracy'):.4f}, ratio {ratio:.4f}, goggles' labels "
              f"{mean('label_accuracy'):.4f}, {mean('train_s'):.2f} s per task{verdict}")
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="paper", choices=("paper", "hard", "all"))
    parser.add_argument("--seed", type=int, default=0, help="task draw, split and fit seed")
    parser.add_argument("--head", default="linear", choices=("linear", "mlp"))
    parser.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay)
    parser.add_argument("--descriptor-backbone", default="mobilenet_v2",
                        help="the second network (none: VGG-16's descriptors only)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    vgg, _ = cached_maps("vgg16")
    second = None if args.descriptor_backbone == "none" else \
        cached_maps(args.descriptor_backbone)[0]
    tasks: list[Task] = []
    if args.tasks in ("paper", "all"):
        tasks += draw_tasks(args.seed)
    if args.tasks in ("hard", "all"):
        tasks += hard_tasks()
    config = TrainConfig(head=args.head, seed=args.seed,
                         weight_decay=args.weight_decay)
    rows = []
    for task in tasks:
        rows.append(run_task(task, vgg, second, config))
        logging.info("%s done", task_id(task))
    print(f"head {config.head}, weight decay {config.weight_decay}, held out "
          f"{config.holdout:.3f}, seed {config.seed}, input: bilinear descriptors of VGG-16"
          + (f" + {args.descriptor_backbone}" if second is not None else ""))
    print_table(rows)
    met = summarise(rows)
    print(f"acceptance (mean ratio >= {TARGET} over pairs and over multi-class tasks): "
          f"{'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
