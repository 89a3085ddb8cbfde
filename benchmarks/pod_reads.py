"""Bytes each pod of a cluster run reads, at 10k, 100k and 1M images, from the sizes of the
artifacts the code writes.

    python benchmarks/pod_reads.py [--sample 32] [--backbone vgg16] [--max-prototypes 20000]

Writes the real artifacts of ``--sample`` cub-dev images (ingest and extract through
:mod:`goggles.pipeline.stages`, images read in place) and one affinity shard, measures bytes per
image (image file, manifest row, filter maps, descriptors), per prototype and per affinity
entry, and scales them. KFP's launcher downloads every input artifact of a task into its pod
before the task starts, so a pod reads all of each artifact it takes, not just the part it
uses: every affinity shard pod downloads every image's filter maps. With ``--feature-cache``
the extract pod of a +10% rerun reads the new images and the cached entries of the others.

Shards per run: 8 at 10k, 32 at 100k, 128 at 1M images; the prototypes are capped at
``--max-prototypes`` (docs/scale.md's 1M projection uses 20,000).
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
from goggles.pipeline import stages  # noqa: E402

SCALES = {10_000: 8, 100_000: 32, 1_000_000: 128}


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _human(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if count < 1000:
            return f"{count:.3g} {unit}"
        count /= 1000
    return f"{count:.3g} PB"


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
        extracted = stages.run_extract(
            ExtractConfig(backbone=backbone, num_workers=0), str(manifest),
            str(tmp / "features"), str(tmp / "prototypes.parquet"))
        stages.run_affinity(AffinityConfig(num_shards=1), str(tmp / "features"),
                            str(tmp / "prototypes.parquet"), 0, str(tmp / "affinity"))
        images = sum(os.path.getsize(os.path.realpath(p)) for p in source.rglob("*.jpg"))
        features = tmp / "features"
        maps = sum(_size(p) for p in features.glob("shard-*.npy"))
        descriptors = sum(_size(p) for p in features.glob("descriptors-*.npy"))
        m = extracted["num_prototypes"]
        return {"image": images / n, "manifest": _size(manifest) / n, "maps": maps / n,
                "descriptors": descriptors / n, "index": _size(features / "index.parquet") / n,
                "prototype": _size(tmp / "prototypes.parquet") / m,
                "affinity_entry": _size(tmp / "affinity" / "affinity.npy") / (n * m),
                "prototypes_per_image": m / n}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, default=32)
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--max-prototypes", type=int, default=20_000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    b = measure(args.sample, args.backbone)
    print(f"per image: JPEG {_human(b['image'])}, manifest row {_human(b['manifest'])}, "
          f"filter maps {_human(b['maps'])}, descriptors {_human(b['descriptors'])}; per "
          f"prototype {_human(b['prototype'])}; {b['prototypes_per_image']:.2f} prototypes per "
          f"image before the cap of {args.max_prototypes:,}")
    print()
    print("| pod | reads | N = 10k | N = 100k | N = 1M |")
    print("|---|---|---|---|---|")
    rows: dict[str, list[str]] = {}
    for n, shards in SCALES.items():
        m = min(args.max_prototypes, b["prototypes_per_image"] * n)
        features = n * (b["maps"] + b["descriptors"] + b["index"])
        prototypes = m * b["prototype"]
        affinity = n * m * b["affinity_entry"]
        manifest = n * b["manifest"]
        reads = {
            ("list-source", "the listing only"): 0.0,
            ("ingest", "every image"): n * b["image"],
            ("extract", "manifest + every image"): manifest + n * b["image"],
            ("extract, +10% rerun with the feature cache", "manifest + new images + cached "
             "entries"): manifest + 0.1 * n * b["image"] + 0.9 * n * (b["maps"] +
                                                                      b["descriptors"] / 2),
            ("each affinity shard (8, 32, 128 shards)",
             "the whole features artifact + prototypes"): features + prototypes,
            ("", "of which its own rows' filter maps"): n / shards * b["maps"],
            ("infer", "manifest + features (maps too) + prototypes + every shard"):
                manifest + features + prototypes + affinity,
            ("evaluate", "manifest + prototypes + every shard"): manifest + prototypes + affinity,
        }
        for (pod, what), value in reads.items():
            rows.setdefault(f"| {pod} | {what} |", []).append(_human(value))
    for head, values in rows.items():
        print(head + " " + " | ".join(values) + " |")


if __name__ == "__main__":
    main()
