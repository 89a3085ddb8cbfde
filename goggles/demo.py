"""``make demo``: label real Fashion-MNIST images end to end with the Kubeflow pipeline, locally.

Fashion-MNIST (Zalando, MIT licence) comes from Debian's ``dataset-fashion-mnist`` package —
``apt-get download`` and ``dpkg -x``, nothing installed — so a fresh machine with the Debian
archive reachable can run it. A few hundred test-set images of well separated classes
(trouser, bag, sneaker) are written as PNGs in ImageFolder layout (a folder per class), the
pipeline runs on them with kfp's local runner, and the accuracy is printed with where the
report and the labels are. The class folders are the ground truth used only for scoring.

    python -m goggles.demo [--output demo-out] [--classes trouser,bag,sneaker]
                           [--per-class 100] [--backbone mobilenet_v2] [--runner local]
"""

from __future__ import annotations

import argparse
import glob
import gzip
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from goggles.io import storage

logger = logging.getLogger(__name__)

PACKAGE = "dataset-fashion-mnist"
SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
IMAGES_FILE = "t10k-images-idx3-ubyte.gz"
LABELS_FILE = "t10k-labels-idx1-ubyte.gz"
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "ankle-boot")
DEFAULT_CLASSES = ("trouser", "bag", "sneaker")


class DemoError(RuntimeError):
    """The demo data could not be obtained; the message says how to provide it."""


def _has_idx(folder: str) -> bool:
    return all(os.path.isfile(os.path.join(folder, f)) for f in (IMAGES_FILE, LABELS_FILE))


def _apt_download(cache: str) -> str:
    """``apt-get download`` + ``dpkg -x`` the package into ``cache``; returns the idx folder."""
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        raise DemoError(f"no apt-get/dpkg here to fetch {PACKAGE}; put {IMAGES_FILE} and "
                        f"{LABELS_FILE} in a folder and pass --fashion-mnist FOLDER")
    os.makedirs(cache, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as work:
        command = ["apt-get", "download", PACKAGE]
        done = subprocess.run(command, cwd=work, capture_output=True, text=True)
        if done.returncode != 0 and os.geteuid() == 0:
            logger.info("apt-get download failed; refreshing the package lists (apt-get update)")
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True)
            done = subprocess.run(command, cwd=work, capture_output=True, text=True)
        debs = glob.glob(os.path.join(work, f"{PACKAGE}_*.deb"))
        if done.returncode != 0 or not debs:
            raise DemoError(f"`apt-get download {PACKAGE}` failed: {done.stderr.strip()}; run "
                            f"`apt-get update` (as root) or `apt-get install {PACKAGE}`, or pass "
                            "--fashion-mnist FOLDER holding the idx files")
        subprocess.run(["dpkg", "-x", debs[0], os.path.join(cache, "deb")], check=True)
    folder = os.path.join(cache, "deb", SYSTEM_DIR.lstrip("/"))
    if not _has_idx(folder):
        raise DemoError(f"{PACKAGE} did not contain {IMAGES_FILE} under {SYSTEM_DIR}")
    return folder


def locate_fashion_mnist(cache: str, folder: str = "") -> str:
    """The folder holding Fashion-MNIST's test-set idx files: ``folder`` when given, the
    installed package, an earlier download in ``cache``, or a fresh ``apt-get download``."""
    if folder:
        if not _has_idx(folder):
            raise DemoError(f"{folder} lacks {IMAGES_FILE} and {LABELS_FILE}")
        return folder
    for candidate in (SYSTEM_DIR, os.path.join(cache, "deb", SYSTEM_DIR.lstrip("/"))):
        if _has_idx(candidate):
            return candidate
    logger.info("fetching Fashion-MNIST from Debian's %s package", PACKAGE)
    return _apt_download(cache)


def read_idx(data: bytes) -> np.ndarray:
    """Decode an idx file (the MNIST format): big-endian dims, then uint8 values.

    Returns
    -------
    [n] labels for an idx1 file, [n, rows, cols] images for an idx3 file (uint8).
    """
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise DemoError("not an unsigned-byte idx file (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    values = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if values.size != int(np.prod(shape)):
        raise DemoError(f"idx file holds {values.size} values, its header says {shape}")
    return values.reshape(shape)


def write_image_folder(idx_folder: str, destination: str, classes: Sequence[str],
                       per_class: int) -> dict[str, int]:
    """Write the first ``per_class`` test images of each class as PNGs under
    ``destination/<class>/``; returns the count per class."""
    unknown = [c for c in classes if c not in CLASSES]
    if unknown or len(classes) < 2:
        raise DemoError(f"classes must be two or more of {', '.join(CLASSES)}; got {classes}")
    images = read_idx(gzip.decompress(storage.read_bytes(os.path.join(idx_folder, IMAGES_FILE))))
    labels = read_idx(gzip.decompress(storage.read_bytes(os.path.join(idx_folder, LABELS_FILE))))
    counts = {}
    for name in classes:
        chosen = np.flatnonzero(labels == CLASSES.index(name))[:per_class]
        for i, index in enumerate(chosen):
            buffer = io.BytesIO()
            Image.fromarray(images[index], mode="L").save(buffer, format="PNG")
            storage.write_bytes(storage.join(destination, name, f"{i:05d}.png"),
                                buffer.getvalue())
        counts[name] = len(chosen)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m goggles.demo", allow_abbrev=False,
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="demo-out", help="folder for data and results")
    parser.add_argument("--classes", default=",".join(DEFAULT_CLASSES),
                        help=f"comma-separated, from {', '.join(CLASSES)}")
    parser.add_argument("--per-class", type=int, default=100, help="images per class")
    parser.add_argument("--backbone", default="mobilenet_v2", choices=("vgg16", "mobilenet_v2"))
    parser.add_argument("--shards", type=int, default=3, help="affinity shards (fan-out)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runner", default="local", choices=("local", "docker", "inprocess"))
    parser.add_argument("--fashion-mnist", default="",
                        help="folder with the idx files (default: Debian's package)")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # the demo's and goggles' own lines; kfp's task output (coloured, per task) only as warnings
    handler.addFilter(lambda record: record.levelno >= logging.WARNING
                      or record.name.startswith(("goggles", "__main__")))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    from goggles.parameters import RunParameters
    from goggles.pipeline.inprocess import run_inprocess

    output = os.path.abspath(args.output)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    try:
        idx_folder = locate_fashion_mnist(os.path.join(output, "cache"), args.fashion_mnist)
    except DemoError as error:
        sys.stderr.write(f"demo: error: {error}\n")
        return 2
    images = os.path.join(output, "images")
    shutil.rmtree(images, ignore_errors=True)
    counts = write_image_folder(idx_folder, images, classes, args.per_class)
    logger.info("wrote %s PNGs of Fashion-MNIST's test set to %s", counts, images)
    run = os.path.join(output, "run")
    params = RunParameters(source_uri=images, output_uri=run, num_classes=len(classes),
                           backbone=args.backbone, num_shards=args.shards, seed=args.seed)
    metrics: dict[str, Any]
    if args.runner == "inprocess":
        metrics = run_inprocess(params)
    else:
        from goggles.kubeflow.runner import run_pipeline

        metrics = run_pipeline(params, runner=args.runner)
    total = sum(counts.values())
    seconds = metrics.get("pipeline_seconds", sum(metrics["timings_s"].values()))
    # the demo's result is the command's output (stdout), not a log record
    sys.stdout.write(
        f"goggles demo: Fashion-MNIST test set ({PACKAGE}, Debian), {total} images of "
        f"{', '.join(f'{c} ({n})' for c, n in counts.items())}; backbone {args.backbone}, "
        f"{args.shards} affinity shards, runner {args.runner}\n"
        f"accuracy: {metrics['accuracy']:.4f} (k-means start alone: "
        f"{metrics['accuracy_kmeans']:.4f}); EM iterations: {metrics['em_iterations']}\n"
        f"pipeline time: {seconds:.1f} s; stages (s): {metrics['timings_s']}\n"
        f"report: {os.path.join(run, 'report.html')}\n"
        f"labels: {os.path.join(run, 'labels.parquet')}\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
