"""A first run and an identical rerun into the same output, with each runner (the default kfp
local runner and the in-process one), and a rerun with new dev labels.

    python benchmarks/rerun_runners.py [--classes 001 014] [--per-class 40]
                                       [--backbone vgg16] [--runners local inprocess]

On cub-dev (copied into a temporary folder: the runners' default does not follow symlinks):
``--per-class`` images of each species. Per runner, into one fresh output:

1. ``first``: the whole pipeline;
2. ``rerun``: the same command again: every stage is reused (``features_reused`` must equal
   the image count, ``features_computed`` 0);
3. ``dev labels``: the same with two dev labels per species: inference and what follows are
   redone, the extraction is not (asserted as for the rerun).

Prints the wall seconds of each (the whole ``goggles run`` command, in a subprocess as a person
runs it) and the rerun/first ratio per runner (the issue's target: at most 25%).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cub import require_cub  # noqa: E402
from benchmarks.timing import machine  # noqa: E402


def _source(cub: Path, root: Path, prefixes: list[str], per_class: int) -> Path:
    source = root / "source"
    for prefix in prefixes:
        folder = next(p for p in sorted(cub.iterdir()) if p.name.startswith(prefix + "."))
        (source / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:per_class]:
            shutil.copy(image, source / folder.name / image.name)
    return source


def _run(source: Path, out: Path, runner: str, backbone: str, *extra: str) -> float:
    """Seconds of one ``goggles run`` command."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "goggles.cli", "run", str(source),
                           "--num-classes", "2", "--output", str(out), "--runner", runner,
                           "--backbone", backbone, *extra],
                          capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"goggles run failed ({runner}):\n{done.stderr[-3000:]}")
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", nargs="+", default=["001", "014"],
                        help="species prefixes of cub-dev")
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--runners", nargs="+", default=["local", "inprocess"])
    args = parser.parse_args(argv)
    cub = require_cub()
    print(machine())
    with tempfile.TemporaryDirectory(prefix="goggles-rerun-runners-") as folder:
        root = Path(folder)
        source = _source(cub, root, args.classes, args.per_class)
        n = sum(1 for _ in source.rglob("*.jpg"))
        dev = root / "dev.csv"
        dev.write_text("uri,label\n" + "".join(
            f"{image},{image.parent.name.split('.', 1)[1]}\n"
            for species in sorted(source.iterdir()) for image in sorted(species.iterdir())[:2]))
        print(f"{n} images of {len(args.classes)} species, backbone {args.backbone}")
        print(f"{'runner':<10} {'first s':>8} {'rerun s':>8} {'ratio':>6} {'dev labels s':>13}")
        for runner in args.runners:
            out = root / f"out-{runner}"
            first = _run(source, out, runner, args.backbone)
            rerun = _run(source, out, runner, args.backbone)
            metrics = json.loads((out / "metrics.json").read_text())
            assert (metrics["features_computed"], metrics["features_reused"]) == (0, n), metrics
            named = _run(source, out, runner, args.backbone, "--dev-labels", str(dev))
            metrics = json.loads((out / "metrics.json").read_text())
            assert metrics["features_computed"] == 0 and metrics["dev_set"]["n_images"] == 4
            print(f"{runner:<10} {first:>8.1f} {rerun:>8.1f} {rerun / first:>6.1%} "
                  f"{named:>13.1f}", flush=True)


if __name__ == "__main__":
    main()
