"""Digests of labels.parquet on the cub-dev tasks: run before and after a change that must not
change the labels (a refactor), and compare.

    python benchmarks/identity.py --work DIR [--runs NAME] [--tasks paper|all] [--limit N]
                                  [--methods graph-em,em] [--save F.json | --compare F.json]

Every task (the paper-style draw of benchmarks/cub.py, plus the same-family pairs with ``--tasks
all``) becomes a folder of links to its cub-dev images under ``DIR/sources`` (kept, so that two
runs see the same URIs) and runs through the whole pipeline in process, into
``DIR/<runs>/<task>`` (one output per task: the methods after the first reuse its extraction and
affinity through the stage records). Prints per task and method the accuracy and the sha256 of
labels.parquet; ``--compare`` reads an earlier ``--save`` and says which digests differ (exit 1
if any).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cub import CUB, draw_tasks, hard_tasks, require_cub, task_id  # noqa: E402
from goggles.parameters import RunParameters  # noqa: E402
from goggles.pipeline.inprocess import run_inprocess  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="folder for the task sources and runs")
    parser.add_argument("--runs", default="runs", help="subfolder of --work for the outputs")
    parser.add_argument("--tasks", default="all", choices=("paper", "all"))
    parser.add_argument("--methods", default="graph-em,em")
    parser.add_argument("--limit", type=int, default=0,
                        help="only the first N tasks (0: all); extraction on a shared CPU is slow")
    parser.add_argument("--save", default="", help="write the digests to this JSON file")
    parser.add_argument("--compare", default="", help="compare with digests saved earlier")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    require_cub()
    tasks = draw_tasks() + (hard_tasks() if args.tasks == "all" else [])
    tasks = tasks[:args.limit] if args.limit else tasks
    work = Path(args.work)
    digests: dict[str, str] = {}
    for task in tasks:
        name = task_id(task).replace("/", "-")
        source = work / "sources" / name
        if not source.exists():
            for species in task.classes:
                (source / species).mkdir(parents=True)
                for image in sorted((CUB / species).iterdir()):
                    (source / species / image.name).symlink_to(image)
        out = work / args.runs / name
        for method in args.methods.split(","):
            start = time.perf_counter()
            metrics = run_inprocess(RunParameters(source_uri=str(source), output_uri=str(out),
                                                  num_classes=len(task.classes), method=method,
                                                  follow_symlinks=True))
            digest = hashlib.sha256((out / "labels.parquet").read_bytes()).hexdigest()
            digests[f"{name} {method}"] = digest
            print(f"{name:<20} {method:<9} {metrics.get('accuracy', float('nan')):.4f} "
                  f"{digest[:16]} {time.perf_counter() - start:6.1f} s", flush=True)
    if args.save:
        Path(args.save).write_text(json.dumps(digests, indent=1) + "\n")
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        differ = sorted(k for k in digests if before.get(k) != digests[k])
        print(f"{len(digests) - len(differ)} of {len(digests)} labels.parquet byte-identical"
              + (f"; different: {', '.join(differ)}" if differ else ""))
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
