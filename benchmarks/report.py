"""How large and how slow report.html is for a big run (acceptance: N = 5,000 under 5 MB, written
in under 10 s).

    python benchmarks/report.py [--images 5000] [--classes 10] [--per-image 3] [--shards 4]

A run's artifacts are made without the CNN: cub-dev's JPEGs (symlinked, cycled to reach N; drawn
images where cub-dev is absent) in K folders, a manifest listing them, prototypes with real
(image_id, h, w) positions, and an N x (per-image·N) affinity matrix with one bright block per
class plus noise, stored as row shards. ``run_infer`` (EM, streamed from the shards) and
``run_evaluate`` then write labels, inference.json and metrics as a real run does, and
``write_report`` is timed. Prints the size, the seconds, the share of the time in each part, and
whether both limits hold.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import logging
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cub import CUB  # noqa: E402
from goggles.inference.config import InferConfig  # noqa: E402
from goggles.io import storage  # noqa: E402
from goggles.io.artifacts import MANIFEST_SCHEMA  # noqa: E402
from goggles.pipeline import stages  # noqa: E402
from goggles.report.page import write_report  # noqa: E402

LIMIT_BYTES = 5 * 2**20
LIMIT_SECONDS = 10.0


def make_images(root: Path, n: int, k: int) -> tuple[list[str], list[str]]:
    """N image files in K class folders: cub-dev JPEGs symlinked (cycled), or drawn ones."""
    from PIL import Image

    sources = sorted(CUB.glob("*/*.jpg")) if CUB.is_dir() else []
    rng = np.random.default_rng(0)
    uris, labels = [], []
    for i in range(n):
        cls = i * k // n
        folder = root / f"class_{cls:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img_{i:05d}.jpg"
        if sources:
            path.symlink_to(sources[(i * 7919) % len(sources)])
        else:
            pixels = rng.integers(0, 255, size=(240, 320, 3), dtype=np.uint8)
            pixels[..., cls % 3] //= 3
            Image.fromarray(pixels).save(path, quality=85)
        uris.append(str(path))
        labels.append(folder.name)
    return uris, labels


def write_run(root: Path, n: int, k: int, per_image: int, shards: int,
              max_iter: int) -> dict[str, object]:
    uris, labels = make_images(root / "source", n, k)
    out = root / "out"
    paths = {"manifest": str(out / "manifest.parquet"),
             "prototypes": str(out / "artifacts" / "prototypes.parquet"),
             "labels": str(out / "labels.parquet"),
             "inference": str(out / "artifacts" / "inference.json"),
             "metrics": str(out / "metrics.json"), "report": str(out / "report.html")}
    storage.write_parquet(pa.table({
        "image_id": np.arange(n), "uri": uris,
        "sha256": [hashlib.sha256(u.encode()).hexdigest() for u in uris],
        "width": np.full(n, 500, np.int32), "height": np.full(n, 375, np.int32),
        "label": labels, "status": ["accepted"] * n, "error": [None] * n,
    }, schema=MANIFEST_SCHEMA), paths["manifest"])
    rng = np.random.default_rng(1)
    m = per_image * n
    source = np.repeat(np.arange(n), per_image)
    storage.write_parquet(pa.table({
        "prototype_id": np.arange(m), "image_id": source,
        "h": rng.integers(0, 7, m).astype(np.int32), "w": rng.integers(0, 7, m).astype(np.int32),
        "channel": rng.integers(0, 512, m).astype(np.int32),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(m * 4, np.float32)), 4),
    }), paths["prototypes"])
    truth = np.arange(n) * k // n
    bounds = np.linspace(0, n, shards + 1).astype(int)
    shard_uris = []
    for shard, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        same = truth[start:stop, None] == truth[source][None, :]
        block = (np.where(same, np.float32(0.62), np.float32(0.38))
                 + rng.normal(0, 0.09, (stop - start, m)).astype(np.float32))
        rows = np.flatnonzero((source >= start) & (source < stop))
        block[source[rows] - start, rows] = 1.0
        uri = str(out / "artifacts" / "affinity" / f"shard-{shard:05d}")
        storage.write_npy(np.clip(block, 0, 1), storage.join(uri, "affinity.npy"))
        storage.write_json({"start": int(start), "stop": int(stop), "shard_id": shard,
                            "num_shards": shards, "num_prototypes": m},
                           storage.join(uri, "meta.json"))
        shard_uris.append(uri)
    start_time = time.perf_counter()
    stages.run_infer(InferConfig(num_classes=k, max_iter=max_iter, device="cpu", method="em"),
                    paths["manifest"], paths["prototypes"], shard_uris, paths["labels"],
                    paths["inference"])
    infer_seconds = time.perf_counter() - start_time
    metrics = stages.run_evaluate(paths["manifest"], paths["labels"], paths["inference"],
                                 paths["metrics"], extra={"backbone": "vgg16",
                                                          "num_prototypes": m})
    metrics["timings_s"] = {"infer": round(infer_seconds, 2)}
    return {"paths": paths, "shards": shard_uris, "metrics": metrics, "m": m}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-image", type=int, default=3,
                        help="prototypes per image (top_k=5 keeps about 3 after duplicates)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--max-iter", type=int, default=30)
    parser.add_argument("--keep", default="", help="copy report.html here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="goggles-report-bench-") as tmp:
        start = time.perf_counter()
        run = write_run(Path(tmp), args.images, args.classes, args.per_image, args.shards,
                        args.max_iter)
        setup = time.perf_counter() - start
        paths = run["paths"]
        assert isinstance(paths, dict)
        def report() -> None:
            write_report(paths["report"], run["metrics"],  # type: ignore[arg-type]
                         labels_uri=paths["labels"], inference_uri=paths["inference"],
                         prototypes_uri=paths["prototypes"],
                         affinity_uris=run["shards"])  # type: ignore[arg-type]

        start = time.perf_counter()
        report()
        seconds = time.perf_counter() - start
        profile = cProfile.Profile()  # a second time, profiled, for the breakdown
        profile.enable()
        report()
        profile.disable()
        size = Path(paths["report"]).stat().st_size
        if args.keep:
            Path(args.keep).write_bytes(Path(paths["report"]).read_bytes())
        metrics = run["metrics"]
        assert isinstance(metrics, dict)
        m = int(str(run["m"]))
        print(f"N = {args.images} images, K = {args.classes}, M = {m} prototypes, "
              f"A = {args.images * m * 4 / 2**20:.0f} MiB in {args.shards} shards "
              f"(setup incl. EM {setup:.1f} s, EM accuracy {metrics.get('accuracy', 0):.4f})")
        print(f"report.html: {size / 2**20:.2f} MiB (limit {LIMIT_BYTES / 2**20:.0f}), "
              f"written in {seconds:.2f} s (limit {LIMIT_SECONDS:.0f})")
        stream = io.StringIO()
        stats = pstats.Stats(profile, stream=stream).sort_stats("cumulative")
        parts = {"affinity_view": "one pass over A (pooling, histogram columns)",
                 "_load_images": "decoding pictures", "prototype_patch": "cutting patches",
                 "_thumbnail": "thumbnails", "heatmap_image": "drawing the heatmap",
                 "png_uri": "PNG encoding", "read_parquet": "reading tables"}
        for name, what in parts.items():
            total = sum(v[3] for k, v in stats.stats.items()  # type: ignore[attr-defined]
                        if k[2] == name)
            print(f"  {what:<45} {total:6.2f} s (profiled run)")
        ok = size < LIMIT_BYTES and seconds < LIMIT_SECONDS
        print("within both limits" if ok else "LIMIT EXCEEDED")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
