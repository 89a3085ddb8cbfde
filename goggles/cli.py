"""The ``goggles`` command.

    goggles run SOURCE --num-classes K --output OUT [--backbone vgg16] [--weights URI]
                [--top-k 5] [--shards S] [--seed 0] [--dev-labels FILE] [--method em]
                [--runner local|docker|inprocess]
    goggles compile [--output goggles_pipeline.yaml]
    goggles submit  --host URL [--experiment NAME] [PARAM=VALUE ...]
    goggles schedule --host URL --cron "0 0 3 * * *" [PARAM=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from goggles import __version__
from goggles.config import BACKBONES, METHODS, ConfigError

logger = logging.getLogger("goggles")

RUNNERS = ("local", "docker", "inprocess")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="goggles", description="Label image datasets automatically with affinity coding.")
    parser.add_argument("--version", action="version", version=f"goggles {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="label the images under SOURCE on this machine")
    run.add_argument("source", metavar="SOURCE",
                     help="folder or bucket prefix of images (path, file://, gs://, s3://, "
                          "memory://); first-level folders are read as ground-truth labels")
    run.add_argument("--num-classes", type=int, required=True, help="number of classes K")
    run.add_argument("--output", required=True, help="where labels, metrics and report go")
    run.add_argument("--backbone", default="vgg16", choices=BACKBONES)
    run.add_argument("--weights", default="", help="URI of backbone weights (state dict or "
                                                   "safetensors); default: resolved offline")
    run.add_argument("--top-k", type=int, default=5, help="prototypes per image (paper: 5)")
    run.add_argument("--shards", type=int, default=1, help="row shards of the affinity matrix")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--max-iter", type=int, default=100, help="EM iterations at most")
    run.add_argument("--method", default="em", choices=METHODS,
                     help="em (GOGGLES), kmeans (AF+KM), em-random (random start)")
    run.add_argument("--dev-labels", default="", help="CSV/Parquet of uri,label naming clusters")
    run.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    run.add_argument("--runner", default="inprocess", choices=RUNNERS,
                     help="inprocess: call the library directly (default); local: kfp's local "
                          "runner; docker: kfp's DockerRunner with the project image")
    return parser


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    from goggles.runners import RunParameters, run_inprocess

    params = RunParameters(
        source_uri=args.source, output_uri=args.output, num_classes=args.num_classes,
        backbone=args.backbone, weights_uri=args.weights, top_k=args.top_k,
        num_shards=args.shards, method=args.method, max_iter=args.max_iter, seed=args.seed,
        dev_labels_uri=args.dev_labels, device=args.device)
    params.validate()
    if args.runner == "inprocess":
        metrics = run_inprocess(params)
    else:
        from goggles.kfp_runner import run_pipeline

        metrics = run_pipeline(params, runner=args.runner)
    summary = {k: metrics[k] for k in ("n_images", "n_rejected", "num_classes", "num_prototypes",
                                       "em_iterations", "converged", "accuracy",
                                       "accuracy_kmeans", "timings_s") if k in metrics}
    print(json.dumps(summary, indent=2))
    print(f"labels: {args.output.rstrip('/')}/labels.parquet")
    print(f"report: {args.output.rstrip('/')}/report.html")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return _run(args)
    except (ConfigError, ValueError) as error:
        print(f"goggles: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - one clear line, details with -v
        logger.debug("failure", exc_info=True)
        print(f"goggles: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
