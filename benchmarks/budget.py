"""Accuracy against the prototype budget on cub-dev (goggles.features.budget: a seeded uniform
sample).

    python benchmarks/budget.py [--seed 0]

For the paper-style tasks (10 random pairs, 6 random 3-5-class sets) and the same-family pairs,
prints mean accuracy with all prototypes and with the budget at 1/2, 1/4, 1/8 of them and at N
(one per image on average). Filter maps come from the cub-dev cache (benchmarks/cub.py); prototypes,
affinity and sharded EM run with the library's functions, on affinity shards streamed from disk.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cub import cached_maps, draw_tasks, hard_tasks  # noqa: E402
from goggles.features.affinity import affinity_block, shard_bounds  # noqa: E402
from goggles.features.budget import candidate_keys, select_within_budget  # noqa: E402
from goggles.features.prototypes import select_prototypes  # noqa: E402
from goggles.inference.config import InferConfig  # noqa: E402
from goggles.inference.registry import fit_method  # noqa: E402
from goggles.io import storage  # noqa: E402
from goggles.io.artifacts import StoredShards  # noqa: E402
from goggles.report.evaluation import evaluate  # noqa: E402

FRACTIONS = {"all": None, "1/2": 0.5, "1/4": 0.25, "1/8": 0.125}


def sharded_affinity(maps: np.ndarray, vectors: np.ndarray, folder: Path,
                     num_shards: int) -> StoredShards:
    """Write A as ``num_shards`` row shards the way the affinity stage does; return them."""
    uris = []
    for shard, (start, stop) in enumerate(shard_bounds(len(maps), num_shards)):
        uri = str(folder / f"shard-{shard:05d}")
        storage.write_npy(affinity_block(maps[start:stop], vectors), f"{uri}/affinity.npy")
        storage.write_json({"start": start, "stop": stop, "num_prototypes": len(vectors)},
                           f"{uri}/meta.json")
        uris.append(uri)
    return StoredShards(uris)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shards", type=int, default=3)
    args = parser.parse_args(argv)
    maps_by_class, _ = cached_maps("vgg16")
    columns = [*FRACTIONS, "N"]
    groups: dict[str, dict[str, list[float]]] = {}
    identical = True
    with tempfile.TemporaryDirectory() as scratch:
        for task_number, task in enumerate(draw_tasks(args.seed) + hard_tasks()):
            maps = np.concatenate([maps_by_class[c] for c in task.classes])
            truth = [c for c in task.classes for _ in range(len(maps_by_class[c]))]
            n = len(maps)
            everything = select_prototypes(maps, np.arange(n), 5)
            group = "binary" if task.name == "binary" else (
                "hard" if task.name == "hard" else "multi")
            config = InferConfig(num_classes=len(task.classes), seed=args.seed, method="em")
            for column in columns:
                fraction = FRACTIONS.get(column)
                budget = n if column == "N" else (
                    0 if fraction is None else int(len(everything) * fraction))
                kept = everything.take(select_within_budget(candidate_keys(
                    everything.image_id, everything.h, everything.w, seed=args.seed), budget))
                folder = Path(scratch) / f"{task_number}-{column.replace('/', '_')}"
                shards = sharded_affinity(maps, kept.vectors, folder, args.shards)
                probs = fit_method(config, shards, kept.image_id).posteriors_
                if column == "all":  # the streamed, sharded EM equals the in-memory one
                    in_memory = fit_method(config, affinity_block(maps, kept.vectors),
                                           kept.image_id).posteriors_
                    identical &= bool(np.array_equal(in_memory, probs))
                accuracy = evaluate(truth, probs.argmax(axis=1), len(task.classes))["accuracy"]
                groups.setdefault(group, {}).setdefault(column, []).append(float(accuracy))
    print(f"mean accuracy against the prototype budget (seed {args.seed}, {args.shards} shards; "
          "M is about 3 N without a budget)")
    print(f"{'tasks':<16}" + "".join(f"{c:>9}" for c in ["all", "M/2", "M/4", "M/8", "N"]))
    for group, by_column in groups.items():
        count = len(by_column["all"])
        print(f"{group + f' ({count})':<16}" + "".join(
            f"{np.mean(by_column[c]):>9.4f}" for c in columns))
    print("sharded EM on streamed shards == in-memory EM on every task: "
          + ("yes" if identical else "NO"))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
