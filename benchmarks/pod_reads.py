"""Bytes each pod of a cluster run reads, at 10k, 100k and 1M images with the default
parameters, from the model ``goggles plan`` prints (:mod:`goggles.pipeline.costs`).

    python benchmarks/pod_reads.py [--measured [--sample 32] [--backbone vgg16]]
                                   [--max-prototypes P]

With ``--measured`` it writes the real artifacts of ``--sample`` cub-dev images (ingest, the
extract parts and their gather through :mod:`goggles.pipeline`, images read in place) and one
affinity shard, measures bytes per image (image file, manifest row, filter maps, descriptors,
the part's prototype candidates), per prototype and per affinity entry, and feeds them to the
model instead of its defaults (docs/scale.md's measurement). KFP's launcher downloads every
input artifact of a task into its pod before the task starts, so a pod reads all of each
artifact it takes. For each N it prints every task's pods, bytes, peak memory and seconds, the
largest read of one pod (target: 2 GB) and the sum over pods against the bytes of the images
and their features (target: 3x).

Shards per run: ``goggles plan``'s (one per 10,240 images); the prototypes are capped as the run's
default (:func:`goggles.features.budget.prototype_budget`) unless ``--max-prototypes`` says.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cub import require_cub, species  # noqa: E402
from goggles.features.config import AffinityConfig, ExtractConfig  # noqa: E402
from goggles.ingest.config import IngestConfig  # noqa: E402
from goggles.pipeline import costs, stages  # noqa: E402
from goggles.pipeline.costs import human  # noqa: E402
from goggles.pipeline.extract import part_uri, run_extract  # noqa: E402

SCALES = {n: costs.recommended_shards(n) for n in (10_000, 100_000, 1_000_000)}


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(sample: int, backbone: str) -> dict[str, float]:
    """Bytes per image, per prototype and per affinity entry, from written artifacts."""
    cub = require_cub()
    with tempfile.TemporaryDirectory(prefix="goggles-pod-reads-") as folder:
        tmp = Path(folder)
        source = tmp / "source"
        names = species()[:2]
        for name in names:
            (source / name).mkdir(parents=True)
            for image in sorted((cub / name).iterdir())[:sample // 2]:
                (source / name / image.name).symlink_to(image)
        manifest = tmp / "manifest.parquet"
        ingested = stages.run_ingest(IngestConfig(follow_symlinks=True), str(source),
                                     str(manifest))
        n = ingested["n_images"]
        extracted = run_extract(
            ExtractConfig(backbone=backbone, num_workers=0), str(manifest),
            str(tmp / "features"), str(tmp / "prototypes.parquet"))
        stages.run_affinity(AffinityConfig(num_shards=1), part_uri(str(tmp / "features"), 0),
                            str(tmp / "prototypes.parquet"), str(tmp / "affinity"))
        images = sum(os.path.getsize(os.path.realpath(p)) for p in source.rglob("*.jpg"))
        features, part = tmp / "features", tmp / "features" / "part-00000"
        maps = sum(_size(p) for p in part.glob("shard-*.npy")) + _size(part / "index.parquet")
        descriptors = sum(_size(p) for p in features.glob("descriptors-*.npy"))
        logits = sum(_size(p) for p in features.glob("imagenet-logits.npy"))
        m = extracted["num_prototypes"]
        return {"image": images / n, "manifest": _size(manifest) / n, "maps": maps / n,
                "descriptors": descriptors / n, "logits": logits / n,
                "candidates": _size(part / "candidates.parquet") / n,
                "prototype": _size(tmp / "prototypes.parquet") / m,
                "affinity_entry": _size(tmp / "affinity" / "affinity.npy") / (n * m),
                "prototypes_per_image": m / n}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, default=32)
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--max-prototypes", type=int, default=None,
                        help="the run's --max-prototypes (default: the run's default)")
    parser.add_argument("--measured", action="store_true",
                        help="measure the sizes on cub-dev (default: goggles.pipeline.costs')")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    b = measure(args.sample, args.backbone) if args.measured else dict(costs.MEASURED)
    print(f"per image: JPEG {human(b['image'])}, manifest row {human(b['manifest'])}, "
          f"filter maps {human(b['maps'])}, descriptors {human(b['descriptors'])}, "
          f"prototype candidates {human(b['candidates'])}; per prototype "
          f"{human(b['prototype'])}; {b['prototypes_per_image']:.2f} prototypes per image "
          f"({'measured' if args.measured else 'docs/scale.md'})")
    for n, shards in SCALES.items():
        planned = costs.plan(n, shards=shards, max_prototypes=args.max_prototypes, sizes=b)
        total = costs.totals(planned)["bytes_read"]
        data = n * (b["image"] + b["maps"] + b["descriptors"] + b["logits"])
        worst = max(planned, key=lambda c: c.bytes_read)
        print(f"\nN = {n:,} ({shards} shards)\n{costs.table(planned)}")
        print(f"largest read of one pod: {worst.task} {human(worst.bytes_read)} (target "
              f"<= 2 GB: {'met' if worst.bytes_read <= 2e9 else 'NOT met'}); all pods "
              f"{human(total)} = {total / data:.2f}x the images + features ({human(data)}; "
              f"target <= 3x: {'met' if total <= 3 * data else 'NOT met'})")


if __name__ == "__main__":
    main()
