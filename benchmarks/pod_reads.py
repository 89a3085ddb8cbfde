"""Bytes each pod of a cluster run reads, at 10k, 100k and 1M images, from the sizes of the
artifacts the code writes: before and after extraction was fanned out.

    python benchmarks/pod_reads.py [--sample 32] [--backbone vgg16] [--max-prototypes 20000]

Writes the real artifacts of ``--sample`` cub-dev images (ingest, the extract parts and their
gather through :mod:`goggles.pipeline`, images read in place) and one affinity shard, measures
bytes per image (image file, manifest row, filter maps, descriptors, the part's prototype
candidates), per prototype and per affinity entry, and scales them. KFP's launcher downloads
every input artifact of a task into its pod before the task starts, so a pod reads all of each
artifact it takes. **Before**: one extract task; every affinity shard, infer and evaluate took
the whole features artifact (every image's filter maps). **After** (this code): one extract
task per row shard, a gather task that reads the parts' summaries (prototype candidates,
descriptors), affinity shard ``s`` takes part ``s``'s maps alone, infer the gathered
descriptors. A +10% rerun with the feature cache reads the new images and the cached entries
of the others.

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
from goggles.pipeline.extract import part_uri, run_extract  # noqa: E402

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


def reads(b: dict[str, float], n: int, shards: int, max_prototypes: int,
          ) -> dict[tuple[str, str], tuple[float, float]]:
    """(pod, what it reads) → bytes (before, after) at ``n`` images over ``shards`` shards."""
    m = min(max_prototypes, b["prototypes_per_image"] * n)
    manifest, prototypes = n * b["manifest"], m * b["prototype"]
    features = n * (b["maps"] + b["descriptors"] + b["logits"])  # before: one artifact
    gathered = n * (b["descriptors"] + b["logits"])  # after: no maps
    affinity = n * m * b["affinity_entry"]
    cache_entries = 0.9 * n * (b["maps"] + b["descriptors"] / 2)
    return {
        ("list-source", "the listing"): (0.0, 0.0),
        ("ingest", "every image"): (n * b["image"],) * 2,
        ("extract (before: one pod; after: each of the shards)", "manifest + its images"):
            (manifest + n * b["image"], manifest + n / shards * b["image"]),
        ("extract, +10% rerun with the feature cache", "manifest + new images + cached "
         "entries"): (manifest + 0.1 * n * b["image"] + cache_entries,
                      manifest + (0.1 * n * b["image"] + cache_entries) / shards),
        ("gather (after only)", "every part's prototype candidates and descriptors"):
            (0.0, n * (b["candidates"] + b["descriptors"] + b["logits"])),
        ("each affinity shard", "before: every image's maps; after: its own rows' maps, + "
         "prototypes"): (features + prototypes, n / shards * b["maps"] + prototypes),
        ("infer", "manifest + features (before: maps too) + prototypes + every shard"):
            (manifest + features + prototypes + affinity,
             manifest + gathered + prototypes + affinity),
        ("evaluate", "manifest + prototypes + every shard"):
            (manifest + prototypes + affinity,) * 2,
    }


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
          f"filter maps {_human(b['maps'])}, descriptors {_human(b['descriptors'])}, "
          f"prototype candidates {_human(b['candidates'])}; per prototype "
          f"{_human(b['prototype'])}; {b['prototypes_per_image']:.2f} prototypes per image "
          f"before the cap of {args.max_prototypes:,}")
    print()
    header = " | ".join(f"N = {n // 1000:,}k ({shards} shards) before | after"
                        for n, shards in SCALES.items())
    print(f"| pod | reads | {header} |")
    print("|---|---|" + "---|---|" * len(SCALES))
    rows: dict[str, list[str]] = {}
    for n, shards in SCALES.items():
        for (pod, what), (before, after) in reads(b, n, shards, args.max_prototypes).items():
            rows.setdefault(f"| {pod} | {what} |", []).extend(
                ["—" if before == 0 and pod.startswith("gather") else _human(before),
                 _human(after)])
    for head, values in rows.items():
        print(head + " " + " | ".join(values) + " |")


if __name__ == "__main__":
    main()
