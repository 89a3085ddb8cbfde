"""Per-stage seconds and images/s of the whole pipeline for N = 500, 2,000 and 10,000 images, and
how each stage's cost grows with N.

    python benchmarks/pipeline.py [--sizes 500 2000 10000] [--num-classes 5] [--shards 4]
                                  [--max-iter 10] [--max-prototypes 10000] [--extract-sample 64]

Every stage runs through ``goggles.pipeline.stages`` on real artifacts in a temporary folder, as
``run_inprocess`` chains them, except the CNN forward pass:

* **images** — cub-dev has 2,950 images; past that they are *repeated*: copy r of an image is a
  symlink ``r-<name>`` beside it, so ingest reads, hashes and decodes every file for real.
* **ingest** — ``run_ingest`` on that folder.
* **extract** — VGG-16 on this CPU runs at a few images/s (10,000 images would take ~45 min), so
  the forward pass is measured once, end to end with ``extract_filter_maps`` on the first
  ``--extract-sample`` images, and *projected* linearly to N (each image costs the same). The
  rest of ``run_extract`` (prototype selection, the prototype budget, writing the filter-map
  shards and the prototypes) is measured at every N by feeding ``run_extract`` the filter maps
  the library extracted earlier into the benchmark cache (benchmarks/cub.py). Maps of repeated
  images are *augmented*: copy r = 1, 2, 3 is the cached map flipped left-right, up-down, or
  both, so no two rows of A are identical.
* **affinity** — ``run_affinity`` for each of ``--shards`` shards, one after another.
* **infer** — ``run_infer`` streaming the stored shards (k-means, then at most ``--max-iter`` EM
  iterations; K = ``--num-classes``).
* **evaluate**, **report** — ``run_evaluate`` and ``write_report``.

``--max-prototypes`` caps M (the library's prototype budget); with top-5 prototypes per image it
only binds at N = 10,000 (M ~ 49,000 → 10,000), which keeps the run near 5 minutes; 0 lifts it.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cub import cached_maps, require_cub, species  # noqa: E402
from benchmarks.timing import machine  # noqa: E402
from goggles.features.config import AffinityConfig, ExtractConfig  # noqa: E402
from goggles.inference.config import InferConfig  # noqa: E402
from goggles.ingest.config import IngestConfig  # noqa: E402
from goggles.io import storage  # noqa: E402
from goggles.io.artifacts import output_paths  # noqa: E402
from goggles.pipeline import stages  # noqa: E402
from goggles.pipeline.extract import part_uri, run_extract  # noqa: E402

STAGES = ("ingest", "extract", "affinity", "infer", "evaluate", "report")


def make_source(folder: Path, count: int) -> int:
    """ImageFolder of ``count`` symlinks to cub-dev images (species by species, then repeated as
    ``r-<name>``); returns the number of distinct images."""
    cub = require_cub()
    files = [(name, f.name) for name in species() for f in sorted((cub / name).iterdir())]
    for i in range(count):
        name, file = files[i % len(files)]
        target = folder / name / f"{i // len(files)}-{file}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(cub / name / file)
    return min(count, len(files))


def cached_map_lookup() -> Callable[[str], np.ndarray]:
    """uri of a symlink made by ``make_source`` → its cached filter map, flipped for copies."""
    maps, _ = cached_maps()
    cub = require_cub()
    position = {(name, f.name): i for name in species()
                for i, f in enumerate(sorted((cub / name).iterdir()))}

    def lookup(uri: str) -> np.ndarray:
        path = Path(uri)
        copy, original = path.name.split("-", 1)
        found = maps[path.parent.name][position[(path.parent.name, original)]]
        r = int(copy) % 4
        if r & 1:
            found = found[:, :, ::-1]
        if r & 2:
            found = found[:, ::-1, :]
        return np.ascontiguousarray(found)

    return lookup


def forward_rate(uris: list[str]) -> float:
    """Images/s of ``extract_filter_maps`` (reading, decoding, VGG-16, prototypes) on ``uris``."""
    from goggles.features.backbones import load_backbone
    from goggles.features.device import resolve_device
    from goggles.features.extraction import extract_filter_maps
    from goggles.features.prototypes import select_prototypes

    def on_batch(first: int, maps: np.ndarray) -> None:
        select_prototypes(maps, np.arange(first, first + len(maps)), 5)

    model, _ = load_backbone("vgg16")
    start = time.perf_counter()
    extract_filter_maps(uris, model, device=resolve_device("auto"), on_batch=on_batch)
    return len(uris) / (time.perf_counter() - start)


def run_size(count: int, args: argparse.Namespace, rate: float,
             lookup: Callable[[str], np.ndarray]) -> dict[str, Any]:
    import goggles.features.extraction
    from goggles.report.page import write_report

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source"
        distinct = make_source(source, count)
        paths = output_paths(str(Path(tmp) / "out"))
        seconds: dict[str, float] = {}

        def timed(stage: str, work: Callable[[], Any]) -> Any:
            start = time.perf_counter()
            result = work()
            seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - start
            return result

        timed("ingest", lambda: stages.run_ingest(IngestConfig(follow_symlinks=True), str(source),
                                                 paths["manifest"]))

        def cached_forward(uris: list[str], model: object, *, on_batch: Callable[..., None],
                           batch_size: int = 32, **_: object) -> None:
            for first in range(0, len(uris), batch_size):
                on_batch(first, np.stack([lookup(u) for u in uris[first:first + batch_size]]))

        real_forward = goggles.features.extraction.extract_filter_maps
        goggles.features.extraction.extract_filter_maps = cached_forward  # type: ignore[assignment]
        try:
            extract_config = ExtractConfig(max_prototypes=args.max_prototypes)
            extracted = timed("extract", lambda: run_extract(
                extract_config, paths["manifest"], paths["features"], paths["prototypes"],
                num_parts=args.shards))
        finally:
            goggles.features.extraction.extract_filter_maps = real_forward
        # the forward pass itself, projected from the measured end-to-end rate
        seconds["extract"] += count / rate

        affinity_config = AffinityConfig(num_shards=args.shards)
        shard_uris = [storage.join(paths["affinity"], f"shard-{s:05d}")
                      for s in range(args.shards)]
        for shard_id, uri in enumerate(shard_uris):
            timed("affinity", functools.partial(
                stages.run_affinity, affinity_config, part_uri(paths["features"], shard_id),
                paths["prototypes"], uri))
        infer_config = InferConfig(num_classes=args.num_classes, max_iter=args.max_iter)
        inferred = timed("infer", lambda: stages.run_infer(
            infer_config, paths["manifest"], paths["prototypes"], shard_uris, paths["labels"],
            paths["inference"], features_uri=paths["features"]))
        metrics = timed("evaluate", lambda: stages.run_evaluate(
            paths["manifest"], paths["labels"], paths["inference"], paths["metrics"]))
        timed("report", lambda: write_report(
            paths["report"], metrics, labels_uri=paths["labels"],
            inference_uri=paths["inference"], prototypes_uri=paths["prototypes"],
            affinity_uris=shard_uris))
    return {"n": count, "distinct": distinct, "m": extracted["num_prototypes"],
            "found": extracted["prototypes_found"], "iterations": inferred["em_iterations"],
            "seconds": seconds}


def growth(rows: list[dict[str, Any]], stage: str) -> str:
    parts = []
    for a, b in zip(rows[:-1], rows[1:], strict=True):
        ta, tb = a["seconds"][stage], b["seconds"][stage]
        if ta > 0 and tb > 0:
            parts.append(f"N^{math.log(tb / ta) / math.log(b['n'] / a['n']):.2f}")
    return " then ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 10000])
    parser.add_argument("--num-classes", type=int, default=5)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--max-iter", type=int, default=10)
    parser.add_argument("--max-prototypes", type=int, default=10000)
    parser.add_argument("--extract-sample", type=int, default=64)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.simplefilter("ignore")
    print(f"machine: {machine()}")
    files = sorted(str(f) for name in species()[:2] for f in (require_cub() / name).iterdir())
    rate = forward_rate(files[:args.extract_sample])
    print(f"extract_filter_maps end to end (read, decode, VGG-16, prototypes): {rate:.2f} "
          f"images/s on {args.extract_sample} cub-dev images; the extract column projects the "
          "forward pass from this rate and measures the rest of run_extract at each N")
    lookup = cached_map_lookup()
    run_size(40, args, rate, lookup)  # warm-up: imports and first calls are not part of N's cost
    rows = [run_size(n, args, rate, lookup) for n in args.sizes]
    print(f"\nK={args.num_classes}, {args.shards} affinity shards, EM at most {args.max_iter} "
          f"iterations, prototype budget {args.max_prototypes or 'none'}; seconds per stage "
          "(images/s in brackets)")
    header = f"{'N':>6} {'distinct':>8} {'M':>6} " + " ".join(f"{s:>17}" for s in STAGES) + \
        f" {'total':>17} {'EM iter':>7}"
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = " ".join(f"{row['seconds'][s]:>8.1f} ({row['n'] / row['seconds'][s]:>6.0f})"
                         for s in STAGES)
        total = sum(row["seconds"].values())
        print(f"{row['n']:>6} {row['distinct']:>8} {row['m']:>6} {cells} "
              f"{total:>8.1f} ({row['n'] / total:>6.1f}) {row['iterations']:>7}")
    if len(rows) > 1:
        print("\ngrowth of each stage's seconds with N (exponent between consecutive sizes):")
        for stage in (*STAGES, "total"):
            if stage == "total":
                for row in rows:
                    row["seconds"]["total"] = sum(v for k, v in row["seconds"].items()
                                                  if k != "total")
            print(f"  {stage:<9} {growth(rows, stage)}")
        print("  (M, the prototypes: " + ", ".join(
            f"{r['m']} of {r['found']} found" for r in rows) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
