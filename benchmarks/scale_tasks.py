"""The cluster's tasks at scale, one process each, on synthetic images: what each task reads and
writes, its peak memory and seconds, against the cost model ``goggles plan`` prints.

    python benchmarks/scale.py --tasks [--images 10000] [--shards 1,4] [--classes 4]
                                       [--relabel 1,4]

(``benchmarks/scale.py --tasks`` runs this.) Every task of the default pipeline runs as its own
Python process, as a pod would, through the stage functions the Kubeflow components call
(:mod:`goggles.pipeline.stages`, :mod:`goggles.pipeline.extract`,
:mod:`goggles.pipeline.fanout`), on the artifacts the tasks before it wrote: plan, the
extraction parts (the filter maps are :mod:`benchmarks.scale`'s synthetic ones, not a CNN's; the
rest of the part, prototypes, descriptors and the budget's candidates, is the library's), the
gather, one affinity task per shard, the fit, one label task per shard, the gather of the
labels and evaluate (metrics and the report). A task's reads are the bytes of the artifacts it
is given (what KFP's launcher downloads into its pod), its peak memory the process's maximum
RSS. For each shard count it prints the tasks and the model's bytes for them (with the sizes
measured here), the accuracy on the planted classes and the per-task seconds of the label
fan-out; then whether the labels are the same for every shard count. ``--relabel`` labels the last
run's images again in fewer label tasks, each over the rows of adjacent shards as one block (as
a run with that many shards would split them; the rows of A themselves are this run's), to check
the infer fan-out's labels do not depend on how its rows are split, without running every task
again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _size(path: str | Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- the tasks (run in a child process) -----------------------------------------------------------

def extract_task(manifest: str, shard: int, shards: int, classes: int, seed: int, maps: str,
                 summary: str) -> None:
    """One extraction part on synthetic filter maps: what run_extract_part writes."""
    from benchmarks.scale import synthetic_maps, templates
    from goggles.features.budget import candidate_keys, part_share, prototype_budget
    from goggles.features.descriptors import bilinear_descriptors
    from goggles.features.prototypes import select_prototypes
    from goggles.io import artifacts, features_folder, storage
    from goggles.pipeline.extract import CANDIDATES, PART_META, part_bounds

    n = artifacts.accepted(storage.read_parquet(manifest)).num_rows
    start, stop = part_bounds(n, shards, 32)[shard]
    writer = features_folder.FeaturesWriter(maps, 2048)
    found, described = [], []
    for first in range(start, stop, 1024):
        block, _ = synthetic_maps(first, min(stop, first + 1024), templates(seed), seed)
        ids = np.arange(first, first + len(block))
        found.append(select_prototypes(block, ids, 5))
        writer.add_maps(ids, block)
        described.append(bilinear_descriptors(block))
    part = {"shard_id": shard, "num_parts": shards, "start": start, "stop": stop}
    meta = writer.finish(backbone="vgg16", weights="synthetic", image_size=224,
                         part={**part, "descriptors": ["vgg16"], "imagenet_logits": False})
    storage.write_npy(np.concatenate(described),
                      storage.join(maps, features_folder.descriptor_file("vgg16")))
    candidates = artifacts.Prototypes.concatenate(found, int(meta["shape"][0]))
    share = part_share(prototype_budget(-1, n, classes).cap, n, 5)
    kept = candidates.take(np.flatnonzero(candidate_keys(
        candidates.image_id, candidates.h, candidates.w, seed=seed) < share))
    storage.write_parquet(kept.to_table(), storage.join(summary, CANDIDATES))
    storage.write_json({**part, "candidates_found": len(candidates),
                        "candidates_kept": len(kept), "shape": meta["shape"],
                        "backbone": "vgg16", "weights": "synthetic", "image_size": 224,
                        "descriptors": ["vgg16"], "imagenet_logits": False, "device": "cpu",
                        "features_computed": stop - start, "features_reused": 0},
                       storage.join(summary, PART_META))


def label_group(fit: str, affinity: list[str], labels: str) -> None:
    """Label the rows of several adjacent affinity shards as one block, as one label task of a
    run with fewer shards does (:func:`goggles.pipeline.fanout.run_label_shard`: the fit's state
    and the task's rows of A and descriptors, :func:`goggles.inference.extend.label_block`)."""
    from goggles.inference.extend import SampleFit, label_block
    from goggles.io import storage
    from goggles.pipeline.fanout import FIT, META, shard_descriptors

    state = SampleFit.load(storage.join(fit, FIT))
    metas = [storage.read_json(storage.join(uri, META)) for uri in affinity]
    start, stop = int(metas[0]["start"]), int(metas[-1]["stop"])
    block = np.empty((stop - start, state.parts[0].shape[1]), dtype=np.float32)
    described: list[np.ndarray] = []
    for meta, uri in zip(metas, affinity, strict=True):
        a, b = int(meta["start"]) - start, int(meta["stop"]) - start
        block[a:b] = storage.read_npy(storage.join(uri, "affinity.npy"))
        for i, values in enumerate(shard_descriptors(uri)):
            if len(described) <= i:
                described.append(np.empty((stop - start, values.shape[1]), dtype=values.dtype))
            described[i][a:b] = values
    posteriors = label_block(state, start, block, described)[0]
    storage.write_npy(posteriors, storage.join(labels, "posteriors.npy"))


def run_task(spec: dict[str, Any]) -> None:
    """Run one task described by ``spec`` (``kind`` and its paths)."""
    from goggles.features.config import AffinityConfig, ExtractConfig
    from goggles.inference.config import InferConfig
    from goggles.pipeline import fanout, stages
    from goggles.pipeline.extract import run_gather

    kind, a = spec["kind"], spec["args"]
    infer = InferConfig(num_classes=a.get("classes", 4), seed=0)
    if kind == "extract":
        extract_task(**a)
    elif kind == "plan":
        fanout.run_plan_sample(infer, a["manifest"], "", a["sample"])
    elif kind == "gather":
        run_gather(ExtractConfig(), a["summaries"], a["features"], a["prototypes"],
                   num_classes=a["classes"])
    elif kind == "affinity":
        stages.run_affinity(AffinityConfig(num_shards=a["shards"], device="cpu"), a["maps"],
                            a["prototypes"], a["affinity"], sample_uri=a["sample"],
                            sample_part_uri=a["sample_part"], view_part_uri=a["view_part"])
    elif kind == "infer":
        fanout.run_fit(infer, a["sample"], a["parts"], a["prototypes"], a["fit"])
    elif kind == "label":
        fanout.run_label_shard(a["fit"], a["affinity"], a["labels"], num_shards=a["shards"])
    elif kind == "label-group":
        label_group(a["fit"], a["affinity"], a["labels"])
    elif kind == "gather-labels":
        fanout.run_gather_labels(a["manifest"], a["fit"], a["parts"], a["prototypes"],
                                 a["labels"], a["inference"])
    elif kind == "evaluate":
        from goggles.pipeline.wiring import evaluate_and_report

        evaluate_and_report(manifest_uri=a["manifest"], labels_uri=a["labels"],
                            inference_uri=a["inference"], prototypes_uri=a["prototypes"],
                            affinity_uris=a["views"], metrics_uri=a["metrics"],
                            report_uri=a["report"], record={"backbone": "vgg16"}, timings={},
                            affinity_sample=True)
    else:
        raise ValueError(f"unknown task {kind!r}")


# -- the parent: one process per task ----------------------------------------------------------

def measured(kind: str, reads: list[str], writes: list[str], args: dict[str, Any],
             log: list[dict[str, Any]]) -> None:
    """Run task ``kind`` in its own process; record its bytes, peak RSS and seconds."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, "--run", json.dumps(
        {"kind": kind, "args": args})], cwd=ROOT)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"task {kind} failed ({child.returncode})")
    log.append({"task": kind, "read": sum(_size(p) for p in reads),
                "written": sum(_size(p) for p in writes), "rss": usage.ru_maxrss * 1024,
                "seconds": time.perf_counter() - started})


def pipeline(folder: Path, n: int, shards: int, classes: int) -> tuple[list[dict], Path]:
    """Every task of a run at ``n`` synthetic images over ``shards`` shards, under ``folder``."""
    import pyarrow as pa

    from goggles.io import storage

    folder.mkdir(parents=True)
    labels = (np.arange(n) * 2654435761 % 2**32) % 4
    manifest = str(folder / "manifest.parquet")
    storage.write_parquet(pa.table({
        "image_id": pa.array(np.arange(n), pa.int64()),
        "uri": [f"/synthetic/{i:07d}.jpg" for i in range(n)], "status": ["accepted"] * n,
        "label": [f"class-{c}" for c in labels], "sha256": ["0" * 64] * n}), manifest)
    log: list[dict] = []
    f = {name: str(folder / name) for name in ("sample", "features", "prototypes.parquet",
                                                "fit", "labels.parquet", "inference.json",
                                                "metrics.json", "report.html")}
    measured("plan", [manifest], [f["sample"]], {"manifest": manifest, "sample": f["sample"],
                                                 "classes": classes}, log)
    parts = [(str(folder / f"maps-{s}"), str(folder / f"summary-{s}")) for s in range(shards)]
    for s, (maps, summary) in enumerate(parts):
        measured("extract", [manifest], [maps, summary],
                 {"manifest": manifest, "shard": s, "shards": shards, "classes": classes,
                  "seed": 0, "maps": maps, "summary": summary}, log)
    summaries = [summary for _, summary in parts]
    measured("gather", summaries, [f["features"], f["prototypes.parquet"]],
             {"summaries": summaries, "features": f["features"],
              "prototypes": f["prototypes.parquet"], "classes": classes}, log)
    shard_uris, sample_parts, views = [], [], []
    for s, (maps, _) in enumerate(parts):
        out = {name: str(folder / f"{name}-{s}") for name in ("affinity", "sample_part",
                                                              "view_part")}
        measured("affinity", [maps, f["prototypes.parquet"], f["sample"]], list(out.values()),
                 {"maps": maps, "prototypes": f["prototypes.parquet"], "sample": f["sample"],
                  "shards": shards, **out}, log)
        shard_uris.append(out["affinity"])
        sample_parts.append(out["sample_part"])
        views.append(out["view_part"])
    measured("infer", [f["sample"], *sample_parts, f["prototypes.parquet"]], [f["fit"]],
             {"sample": f["sample"], "parts": sample_parts, "prototypes": f["prototypes.parquet"],
              "fit": f["fit"], "classes": classes}, log)
    label_parts = []
    for s, shard in enumerate(shard_uris):
        out = str(folder / f"labels-{s}")
        measured("label", [f["fit"], shard], [out], {"fit": f["fit"], "affinity": shard,
                                                     "labels": out, "shards": shards}, log)
        label_parts.append(out)
    measured("gather-labels", [manifest, f["fit"], *label_parts, f["prototypes.parquet"]],
             [f["labels.parquet"], f["inference.json"]],
             {"manifest": manifest, "fit": f["fit"], "parts": label_parts,
              "prototypes": f["prototypes.parquet"], "labels": f["labels.parquet"],
              "inference": f["inference.json"]}, log)
    measured("evaluate", [manifest, f["prototypes.parquet"], *views, f["labels.parquet"],
                          f["inference.json"]], [f["metrics.json"], f["report.html"]],
             {"manifest": manifest, "labels": f["labels.parquet"],
              "inference": f["inference.json"], "prototypes": f["prototypes.parquet"],
              "views": views, "metrics": f["metrics.json"], "report": f["report.html"]}, log)
    return log, folder


def relabel(folder: Path, shards: int, counts: list[int]) -> bool:
    """The run's images under ``folder`` labelled again by ``count`` label tasks for each of
    ``counts``, each task the rows of adjacent shards as one block (the label tasks of a run
    with that many shards, on this run's rows of A); prints each count's tasks, peak RSS and
    seconds and returns whether the labels equal the run's."""
    from goggles.features.affinity import shard_bounds

    def joined(parts: list[str]) -> np.ndarray:
        return np.concatenate([np.load(Path(p) / "posteriors.npy") for p in parts])

    ran = joined([str(folder / f"labels-{s}") for s in range(shards)])
    same = True
    for count in counts:
        log: list[dict] = []
        parts = []
        for g, (a, b) in enumerate(shard_bounds(shards, count)):
            out = str(folder / f"relabel-{count}-{g}")
            affinity = [str(folder / f"affinity-{s}") for s in range(a, b)]
            measured("label-group", [str(folder / "fit"), *affinity], [out],
                     {"fit": str(folder / "fit"), "affinity": affinity, "labels": out}, log)
            parts.append(out)
        equal = bool(np.array_equal(joined(parts), ran))
        same &= equal
        seconds = [entry["seconds"] for entry in log]
        print(f"labelled again in {count} task(s), each the rows of adjacent shards: "
              f"peak RSS {max(e['rss'] for e in log) / 2**30:.2f} GiB, "
              f"{np.mean(seconds):.1f} s mean, {max(seconds):.1f} s max per task; labels "
              f"identical to the {shards}-shard run's: {'yes' if equal else 'NO'}")
    return same


def sizes_of(folder: Path, n: int, shards: int) -> dict[str, float]:
    """The cost model's per-unit sizes, measured on this run's artifacts."""
    from goggles.io import storage

    m = storage.read_parquet(str(folder / "prototypes.parquet")).num_rows
    maps = sum(_size(p) for s in range(shards) for p in (folder / f"maps-{s}").glob("shard-*"))
    descriptors = sum(_size(p) for s in range(shards)
                      for p in (folder / f"maps-{s}").glob("descriptors-*"))
    found = sum(json.loads((folder / f"summary-{s}" / "part.json").read_text())
                ["candidates_found"] for s in range(shards))
    kept = sum(_size(folder / f"summary-{s}" / "candidates.parquet") for s in range(shards))
    kept_count = sum(json.loads((folder / f"summary-{s}" / "part.json").read_text())
                     ["candidates_kept"] for s in range(shards))
    return {"image": 0.0, "manifest": _size(folder / "manifest.parquet") / n,
            "maps": maps / n, "descriptors": descriptors / n, "logits": 0.0,
            "prototypes_per_image": found / n,
            "candidates": kept / max(kept_count, 1) * found / n,
            "prototype": _size(folder / "prototypes.parquet") / m,
            "affinity_entry": 4.0, "label": _size(folder / "labels.parquet") / n}


def report(log: list[dict], folder: Path, n: int, shards: int, classes: int) -> np.ndarray:
    from goggles.io import storage
    from goggles.pipeline import costs
    from goggles.pipeline.costs import human

    model = {c.task: c for c in costs.plan(n, num_classes=classes, shards=shards,
                                           sizes=sizes_of(folder, n, shards))}
    print(f"\n{n:,} synthetic images, {shards} shard(s), {classes} classes")
    print("| task | pods | largest read | model | read / model | peak RSS | seconds (max) |")
    print("|---|---|---|---|---|---|---|")
    for kind in dict.fromkeys(entry["task"] for entry in log):
        runs = [entry for entry in log if entry["task"] == kind]
        read = max(entry["read"] for entry in runs)
        planned = model[kind].bytes_read if kind in model else float("nan")
        print(f"| {kind} | {len(runs)} | {human(read)} | {human(planned)} | "
              f"{read / planned:.2f} | {max(e['rss'] for e in runs) / 2**30:.2f} GiB | "
              f"{max(e['seconds'] for e in runs):.1f} |")
    label_seconds = [entry["seconds"] for entry in log if entry["task"] == "label"]
    print(f"label fan-out: {len(label_seconds)} task(s), {np.mean(label_seconds):.1f} s mean, "
          f"{max(label_seconds):.1f} s max per shard")
    table = storage.read_parquet(str(folder / "labels.parquet"))
    metrics = storage.read_json(str(folder / "metrics.json"))
    print(f"accuracy on the planted classes: {metrics.get('accuracy', float('nan')):.4f}; "
          f"largest read of one task: {human(max(e['read'] for e in log))}; largest RSS "
          f"{max(e['rss'] for e in log) / 2**30:.2f} GiB")
    return np.asarray(table["probs"].to_pylist())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--shards", default="1,4",
                        help="comma-separated shard counts; the labels must agree")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--relabel", default="",
                        help="comma-separated task counts: after the last run, label its images "
                             "again in that many label tasks each (adjacent shards' rows as one "
                             "block, as a run with that many shards would); the labels must "
                             "agree")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--tasks", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        import logging

        logging.basicConfig(level=logging.ERROR)  # the report cannot show synthetic images
        run_task(json.loads(args.run))
        sys.stdout.flush()
        # a task process ends here, as a pod's does; skipping the interpreter's teardown avoids
        # the native libraries' exit-time aborts ("terminate called without an active
        # exception") that would otherwise fail a task whose work is done
        os._exit(0)
    counts = [int(c) for c in args.shards.split(",")]
    with tempfile.TemporaryDirectory(prefix="goggles-scale-tasks-") as scratch:  # noqa: SIM117
        results = []
        for shards in counts:
            log, folder = pipeline(Path(scratch) / f"shards-{shards}", args.images, shards,
                                   args.classes)
            results.append(report(log, folder, args.images, shards, args.classes))
        relabelled = relabel(folder, counts[-1], [int(c) for c in args.relabel.split(",")]) \
            if args.relabel else True
    same = all(np.array_equal(r, results[0]) for r in results) and relabelled
    if len(counts) > 1:
        print(f"\nlabels identical for {', '.join(map(str, counts))} shards: "
              f"{'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
