"""What checking images against the manifest's sha256 costs: ingest + extract with and without
the check, the hashing alone, and what a rerun's source check costs with and without --verify.

    python benchmarks/verify.py [--classes 4] [--per-class 60] [--backbone mobilenet_v2]
                                [--repeats 2]

On the rerun benchmark's grown source (cub-dev read in place through symlinks: the first
``--classes`` species, ``--per-class`` images each: 236 with the defaults, as one species has
fewer than 60). Measured in one process, interleaved (off, on, off, on ...), each mode's
fastest repeat:

* ``ingest + extract``: :func:`goggles.pipeline.stages.run_ingest` then
  :func:`goggles.pipeline.extract.run_extract` (no feature cache), with extract's check of each
  image's bytes (as shipped) and with the check switched off (``changed_since_ingest``
  replaced by a function that checks nothing). MobileNetV2 alone by default: the cheaper the
  network, the larger the check's share, so VGG-16's is smaller still;
* ``hashing alone``: sha256 of every image's bytes already in memory, the exact work the check
  adds (best of 5);
* ``source check``: :func:`goggles.io.source_state.first_change` of an unchanged source against
  its record, trusting metadata (the default) and re-hashing every file (``--verify``), beside
  the listing itself.

Prints a JSON summary with the ratios (no assertion: the issue's bound, at most +5% on ingest +
extract, is read from ``added_share_of_ingest_extract``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cub import require_cub, species  # noqa: E402
from benchmarks.timing import best, interleaved, machine, spread  # noqa: E402
from goggles.features.config import ExtractConfig  # noqa: E402
from goggles.ingest.config import IngestConfig  # noqa: E402
from goggles.io import listing, source_state, storage  # noqa: E402
from goggles.pipeline import stages  # noqa: E402
from goggles.pipeline.extract import run_extract  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    cub = require_cub()
    with tempfile.TemporaryDirectory(prefix="goggles-verify-") as folder:
        tmp = Path(folder)
        source = tmp / "source"
        for name in species()[:args.classes]:
            (source / name).mkdir(parents=True)
            for image in sorted((cub / name).iterdir())[:args.per_class]:
                (source / name / image.name).symlink_to(image)
        ingest_cfg = IngestConfig(follow_symlinks=True)
        extract_cfg = ExtractConfig(backbone=args.backbone, descriptor_backbone="none")
        manifest = str(tmp / "manifest.parquet")

        def ingest_extract() -> None:
            stages.run_ingest(ingest_cfg, str(source), manifest)
            run_extract(extract_cfg, manifest, str(tmp / "features"),
                        str(tmp / "prototypes.parquet"))

        def unchecked() -> None:
            with mock.patch("goggles.features.extraction.changed_since_ingest",
                            lambda data, sha256: False):
                ingest_extract()

        files = listing.list_files(str(source), ingest_cfg.extensions, follow_symlinks=True)
        n = len(files)
        print(f"goggles verification benchmark: {n} cub-dev images ({args.classes} species), "
              f"{args.backbone}; {machine()}", flush=True)
        seconds = interleaved({"unchecked": unchecked, "checked": ingest_extract},
                              args.repeats)
        data = [storage.read_bytes(f.uri) for f in files]
        hashing = interleaved({"hash": lambda: [hashlib.sha256(d).hexdigest() for d in data]},
                              5)["hash"]
        recorded = source_state.record(files, storage.read_parquet(manifest))
        checks = interleaved({
            "listing": lambda: listing.list_files(str(source), ingest_cfg.extensions,
                                                  follow_symlinks=True),
            "metadata": lambda: source_state.first_change(files, recorded),
            "verify": lambda: source_state.first_change(files, recorded, verify=True)}, 5)
        assert source_state.first_change(files, recorded, verify=True) is None
        off, on = best(seconds["unchecked"]), best(seconds["checked"])
        for name, samples in {**seconds, "hashing alone": hashing, **checks}.items():
            print(f"  {name:<14} min / median s: {spread(samples)}")
        print(json.dumps({
            "images": n, "bytes": sum(len(d) for d in data), "backbone": args.backbone,
            "ingest_extract_s_unchecked": round(off, 3),
            "ingest_extract_s_checked": round(on, 3),
            "ratio_checked_over_unchecked": round(on / off, 4),
            "hashing_alone_s": round(best(hashing), 5),
            "added_share_of_ingest_extract": round(best(hashing) / off, 5),
            "source_check_s_metadata": round(best(checks["metadata"]), 5),
            "source_check_s_verify": round(best(checks["verify"]), 5),
            "listing_s": round(best(checks["listing"]), 5),
            "verify_share_of_ingest_extract": round(best(checks["verify"]) / off, 5),
            "measured_at": time.strftime("%Y-%m-%d %H:%M"),
        }, indent=2))


if __name__ == "__main__":
    main()
