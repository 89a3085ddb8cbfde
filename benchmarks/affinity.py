"""The affinity stage's FLOP rate against a bare GEMM of the same size, and what bfloat16 does
to the labels.

    python benchmarks/affinity.py [--images 1000] [--shards 2] [--repeats 5] [--device auto]
                                  [--label-tasks paper|hard|all|none]

One row shard of the real affinity matrix of the first ``--images`` cub-dev images (filter maps
from the benchmark cache, top-5 prototypes): ``affinity_block`` on shard 0 of ``--shards``, i.e.
n images x M prototypes, costs 2·n·H·W·C·M FLOPs. The floor is ``torch.matmul`` of an
[n·H·W, C] by [C, M] product of the same dtype into a preallocated output, on the same device.
The two are interleaved ``--repeats`` times; the fastest repeat of each gives the FLOP rates and
their ratio (target >= 0.7 for the default float32).

Then the labels: every cub-dev task of ``--label-tasks`` is labeled with A computed in float32
and in bfloat16 (everything else the library's defaults), printing mean accuracy with each and
the share of images whose label changed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cub import cached_maps, draw_tasks, hard_tasks, task_id  # noqa: E402
from benchmarks.timing import best, interleaved, machine, spread  # noqa: E402
from goggles.features.affinity import affinity_block, shard_bounds  # noqa: E402
from goggles.features.device import gemm_dtype, resolve_device  # noqa: E402
from goggles.features.prototypes import select_prototypes  # noqa: E402
from goggles.inference.config import InferConfig  # noqa: E402
from goggles.inference.registry import fit_method  # noqa: E402
from goggles.report.evaluation import evaluate  # noqa: E402

OUTPUT_LIMIT = 2**30  # bytes of the reference product's output held at once


def first_images(maps_by_species: dict[str, np.ndarray], count: int) -> np.ndarray:
    parts, total = [], 0
    for name in sorted(maps_by_species):
        parts.append(maps_by_species[name])
        total += len(parts[-1])
        if total >= count:
            break
    return np.concatenate(parts)[:count]


def same_sized_matmul(rows: int, inner: int, columns: int, dtype: torch.dtype,
                      device: torch.device) -> Callable[[], None]:
    """``torch.matmul`` of [rows, inner] by [inner, columns] into a preallocated output (in row
    chunks when the output would exceed ``OUTPUT_LIMIT``)."""
    gen = torch.Generator().manual_seed(0)
    left = torch.rand(rows, inner, generator=gen).to(device, dtype)
    right = torch.rand(inner, columns, generator=gen).to(device, dtype)
    step = max(1, OUTPUT_LIMIT // (columns * left.element_size()))
    out = torch.empty(min(step, rows), columns, dtype=dtype, device=device)

    def run() -> None:
        for r0 in range(0, rows, step):
            part = left[r0:r0 + step]
            torch.matmul(part, right, out=out[:len(part)])
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return run


def speed(maps: np.ndarray, shards: int, repeats: int, device: torch.device) -> bool:
    prototypes = select_prototypes(maps, np.arange(len(maps)), 5).vectors
    start, stop = shard_bounds(len(maps), shards)[0]
    shard = maps[start:stop]
    n, channels, height, width = shard.shape
    m = len(prototypes)
    flops = 2 * n * height * width * channels * m
    print(f"shard 0 of {shards}: {n} images x {m} prototypes, filter maps {channels}x{height}x"
          f"{width}: {flops / 1e9:.0f} GFLOP per shard")
    met = True
    for dtype in ("float32", "bfloat16"):
        compute = gemm_dtype(device, dtype)
        reference = same_sized_matmul(n * height * width, channels, m, compute, device)

        def stage(dtype: str = dtype) -> None:
            affinity_block(shard, prototypes, dtype=dtype, device=device)

        times = interleaved({"matmul": reference, "affinity": stage}, repeats)
        ratio = best(times["matmul"]) / best(times["affinity"])
        if dtype == "float32":
            met = ratio >= 0.7
        target = f"  [target >= 0.7: {'met' if met else 'NOT met'}]" if dtype == "float32" else ""
        print(f"  {dtype:<9} torch.matmul {spread(times['matmul'])} s "
              f"({flops / best(times['matmul']) / 1e9:.1f} GFLOP/s); affinity_block "
              f"{spread(times['affinity'])} s ({flops / best(times['affinity']) / 1e9:.1f} "
              f"GFLOP/s); ratio {ratio:.2f}{target}")
    return met


def labels_effect(which: str, device: torch.device) -> None:
    maps_by_species, _ = cached_maps()
    tasks = []
    if which in ("paper", "all"):
        tasks += draw_tasks(0)
    if which in ("hard", "all"):
        tasks += hard_tasks()
    accuracy: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    changed, total, largest = 0, 0, 0.0
    for task in tasks:
        maps = np.concatenate([maps_by_species[c] for c in task.classes])
        truth = [c for c in task.classes for _ in range(len(maps_by_species[c]))]
        prototypes = select_prototypes(maps, np.arange(len(maps)), 5)
        config = InferConfig(num_classes=len(task.classes), seed=0, method="em")
        labels = {}
        for dtype in accuracy:
            affinity = affinity_block(maps, prototypes.vectors, dtype=dtype, device=device)
            if dtype == "float32":
                exact = affinity
            else:
                largest = max(largest, float(np.abs(affinity - exact).max()))
            probs = fit_method(config, affinity, prototypes.image_id).posteriors_
            labels[dtype] = probs.argmax(axis=1)
            scores = evaluate(truth, labels[dtype], len(task.classes))
            accuracy[dtype].append(float(scores["accuracy"]))  # type: ignore[arg-type]
        changed += int((labels["float32"] != labels["bfloat16"]).sum())
        total += len(maps)
        print(f"  {task.name:<8} {task_id(task):<20} float32 {accuracy['float32'][-1]:.4f}  "
              f"bfloat16 {accuracy['bfloat16'][-1]:.4f}")
    print(f"mean accuracy over {len(tasks)} tasks: float32 {np.mean(accuracy['float32']):.4f}, "
          f"bfloat16 {np.mean(accuracy['bfloat16']):.4f} "
          f"({100 * (np.mean(accuracy['bfloat16']) - np.mean(accuracy['float32'])):+.2f} points)"
          f"; labels changed on {changed} of {total} images (labels are compared as found, "
          f"clusters may be renumbered); largest |A_bf16 - A_fp32| {largest:.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--label-tasks", default="paper",
                        choices=("paper", "hard", "all", "none"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.simplefilter("ignore")
    device = resolve_device(args.device)
    print(f"machine: {machine()}; device {device}")
    maps_by_species, _ = cached_maps()
    met = speed(first_images(maps_by_species, args.images), args.shards, args.repeats, device)
    if args.label_tasks != "none":
        print(f"\nlabels with A in float32 and in bfloat16 (cub-dev, tasks: {args.label_tasks})")
        labels_effect(args.label_tasks, device)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
