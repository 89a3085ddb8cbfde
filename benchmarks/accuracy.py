"""Labeling accuracy on real birds (cub-dev), drawn the way the paper does (§5.1).

    python benchmarks/accuracy.py [--seed 0] [--tasks paper|hard|all] [--backbone vgg16]

10 random species pairs and 6 random 3-5-class sets (fixed seed); ``--tasks hard`` adds the
same-family pairs. Each image goes through the CNN once (filter maps are cached under
``$GOGGLES_BENCH_CACHE``, default ~/.cache/goggles-bench; the extract column is the measured
seconds per image of that pass times N); prototypes, affinity and inference run per task with the
library's own functions. Prints a table (task, N, M, accuracy_kmeans, accuracy, seconds per
stage) and the paper's reference averages.
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
from goggles.affinity import affinity_block  # noqa: E402
from goggles.config import InferConfig  # noqa: E402
from goggles.evaluation import evaluate  # noqa: E402
from goggles.features import select_prototypes  # noqa: E402
from goggles.steps import infer_labels  # noqa: E402

PAPER = {"binary": 0.9809, "multi": 0.9293}


def run_task(task: Task, maps_by_class: dict[str, np.ndarray], extract_s_per_image: float, *,
             seed: int, top_k: int, infer_overrides: dict[str, object]) -> dict[str, object]:
    maps = np.concatenate([maps_by_class[c] for c in task.classes])
    truth = [c for c in task.classes for _ in range(len(maps_by_class[c]))]
    n = len(maps)
    timings = {"extract": extract_s_per_image * n}
    start = time.perf_counter()
    prototypes = select_prototypes(maps, np.arange(n), top_k)
    timings["prototypes"] = time.perf_counter() - start
    start = time.perf_counter()
    affinity = affinity_block(maps, prototypes.vectors)
    timings["affinity"] = time.perf_counter() - start
    config = InferConfig(num_classes=len(task.classes), seed=seed, **infer_overrides)  # type: ignore[arg-type]
    start = time.perf_counter()
    probs, model = infer_labels(affinity, prototypes.image_id, config)
    timings["infer"] = time.perf_counter() - start
    if not (np.isfinite(probs).all() and np.isfinite(affinity).all()):
        raise RuntimeError(f"non-finite affinity or probabilities on task {task_id(task)}")
    again, _ = infer_labels(affinity, prototypes.image_id, config)
    if not np.array_equal(again, probs):
        raise RuntimeError(f"the same seed gave different labels on task {task_id(task)}")
    scores = evaluate(truth, probs.argmax(axis=1), len(task.classes),
                      initial=model.initial_labels_)
    return {"task": task.name, "classes": task_id(task), "n": n, "m": len(prototypes),
            "accuracy_kmeans": scores["accuracy_kmeans"], "accuracy": scores["accuracy"],
            "iterations": model.n_iter_, "timings": timings, "probs": probs}


def print_table(rows: list[dict[str, object]]) -> None:
    header = (f"{'task':<8} {'classes':<20} {'N':>4} {'M':>5} {'acc_km':>7} {'acc':>7} "
              f"{'iter':>4} {'extract_s':>9} {'affin_s':>7} {'infer_s':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        t = r["timings"]
        assert isinstance(t, dict)
        print(f"{r['task']:<8} {r['classes']:<20} {r['n']:>4} {r['m']:>5} "
              f"{r['accuracy_kmeans']:>7.4f} {r['accuracy']:>7.4f} {r['iterations']:>4} "
              f"{t['extract']:>9.1f} {t['affinity']:>7.2f} {t['infer']:>7.2f}")


def summarise(rows: list[dict[str, object]]) -> None:
    groups = {"binary": [r for r in rows if r["task"] == "binary"],
              "multi": [r for r in rows if str(r["task"]).endswith("-class")],
              "hard": [r for r in rows if r["task"] == "hard"]}
    print()
    for name, group in groups.items():
        if not group:
            continue
        acc = float(np.mean([r["accuracy"] for r in group]))
        km = float(np.mean([r["accuracy_kmeans"] for r in group]))
        paper = f"  (paper: {PAPER[name]:.4f})" if name in PAPER else ""
        print(f"mean {name:<6} ({len(group):>2} tasks): accuracy {acc:.4f}, "
              f"k-means start {km:.4f}{paper}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="task-drawing and inference seed")
    parser.add_argument("--tasks", default="paper", choices=("paper", "hard", "all"))
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--method", default="em")
    parser.add_argument("--m-step", default="sampled")
    parser.add_argument("--exclude-self", action="store_true",
                        help="leave out each image's affinity to its own prototypes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    maps, seconds_per_image = cached_maps(args.backbone)
    tasks = []
    if args.tasks in ("paper", "all"):
        tasks += draw_tasks(args.seed)
    if args.tasks in ("hard", "all"):
        tasks += hard_tasks()
    overrides = {"method": args.method, "m_step": args.m_step,
                 "exclude_self": args.exclude_self}
    rows = [run_task(t, maps, seconds_per_image, seed=args.seed, top_k=args.top_k,
                     infer_overrides=overrides) for t in tasks]
    print(f"backbone {args.backbone}, top_k {args.top_k}, seed {args.seed}, {overrides}")
    print_table(rows)
    summarise(rows)
    print("every task: finite affinities and probabilities; a second inference with the same "
          "seed gave identical probabilities")
    return 0


if __name__ == "__main__":
    sys.exit(main())
