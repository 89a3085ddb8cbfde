"""A rerun over a grown source with the feature cache, against a cold run on the same source.

    python benchmarks/rerun.py [--classes 4] [--per-class 60] [--new 0.10]
                               [--backbone vgg16] [--descriptor-backbone mobilenet_v2]

On cub-dev (read in place through symlinks, never copied): the first ``--classes`` species,
``--per-class`` images each. The first source holds all but the last ``--new`` share of each
species' images; the grown source holds them all. Four runs of the library's pipeline
(``run_inprocess``, default method), each into a fresh output:

1. ``first``: the first source, an empty feature cache (fills it);
2. ``incremental``: the grown source, the same cache — must extract exactly the new images;
3. ``cold``: the grown source, no cache — what a run without the cache costs;
4. ``unchanged``: the grown source again, the same cache — must extract nothing.

Asserts the counts (``features_computed``/``features_reused`` of ``metrics.json``) and that the
incremental run's labels equal the cold run's; prints the extract stage's seconds of each run
and the cold/incremental ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cub import require_cub, species  # noqa: E402
from benchmarks.timing import machine  # noqa: E402
from goggles.parameters import RunParameters  # noqa: E402
from goggles.pipeline.inprocess import run_inprocess  # noqa: E402


def _link(source: Path, images: dict[str, list[Path]]) -> None:
    for name, files in images.items():
        folder = source / name
        folder.mkdir(parents=True, exist_ok=True)
        for image in files:
            if not (folder / image.name).exists():
                (folder / image.name).symlink_to(image)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--new", type=float, default=0.10, help="share of images added")
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--descriptor-backbone", default="mobilenet_v2")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    cub = require_cub()
    chosen = species()[:args.classes]
    everything = {name: sorted((cub / name).iterdir())[:args.per_class] for name in chosen}
    keep = {name: files[:len(files) - max(1, round(len(files) * args.new))]
            for name, files in everything.items()}
    n_first = sum(len(v) for v in keep.values())
    n_all = sum(len(v) for v in everything.values())
    with tempfile.TemporaryDirectory(prefix="goggles-rerun-") as folder:
        tmp = Path(folder)
        source, cache = tmp / "source", tmp / "feature-cache"
        _link(source, keep)

        def run(name: str, cached: bool) -> dict:
            params = RunParameters(source_uri=str(source), output_uri=str(tmp / name),
                                   num_classes=args.classes, backbone=args.backbone,
                                   descriptor_backbone=args.descriptor_backbone,
                                   follow_symlinks=True,
                                   feature_cache_uri=str(cache) if cached else "")
            metrics = run_inprocess(params)
            print(f"  {name:<12} images {metrics['n_images']:>5}  computed "
                  f"{metrics['features_computed']:>5}  reused {metrics['features_reused']:>5}  "
                  f"extract {metrics['timings_s']['extract']:7.2f} s", flush=True)
            return metrics

        print(f"goggles rerun benchmark: {args.classes} cub-dev species, {n_first} images, then "
              f"{n_all - n_first} more ({args.new:.0%}); {args.backbone} + "
              f"{args.descriptor_backbone}; {machine()}")
        first = run("first", True)
        _link(source, everything)
        incremental = run("incremental", True)
        cold = run("cold", False)
        unchanged = run("unchanged", True)

        assert first["features_computed"] == n_first, first
        assert incremental["features_computed"] == n_all - n_first, incremental
        assert incremental["features_reused"] == n_first, incremental
        assert unchanged["features_computed"] == 0, unchanged
        labels = {name: pq.read_table(tmp / name / "labels.parquet").sort_by("image_id")
                  for name in ("incremental", "cold", "unchanged")}
        assert labels["incremental"]["label"].equals(labels["cold"]["label"]), \
            "the incremental run's labels differ from a cold run's"
        assert labels["unchanged"]["label"].equals(labels["incremental"]["label"])
        same_bytes = (tmp / "incremental" / "labels.parquet").read_bytes() == \
            (tmp / "cold" / "labels.parquet").read_bytes()
        seconds = {name: m["timings_s"]["extract"] for name, m in
                   (("cold", cold), ("incremental", incremental), ("unchanged", unchanged))}
        print(json.dumps({
            "images": n_all, "new_images": n_all - n_first,
            "extract_s_cold": seconds["cold"], "extract_s_incremental": seconds["incremental"],
            "extract_s_unchanged": seconds["unchanged"],
            "ratio_cold_over_incremental": round(seconds["cold"] / seconds["incremental"], 2),
            "labels_equal": True, "labels_parquet_byte_identical": same_bytes,
            "accuracy_incremental": incremental.get("accuracy"),
            "accuracy_cold": cold.get("accuracy")}, indent=2))


if __name__ == "__main__":
    main()
