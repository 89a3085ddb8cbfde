"""The ``goggles`` command.

    goggles run SOURCE --num-classes K --output OUT [--backbone vgg16] [--weights URI]
                [--top-k 5] [--max-prototypes P] [--shards S] [--seed 0] [--dev-labels FILE]
                [--method graph-em] [--descriptor-backbone mobilenet_v2]
                [--runner local|docker|inprocess] [--pipeline-root DIR] [--cache]
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
from goggles.config import (
    BACKBONES,
    DEFAULT_DESCRIPTOR_BACKBONE,
    DEFAULT_METHOD,
    METHODS,
    ConfigError,
)

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
    run.add_argument("--max-prototypes", type=int, default=0,
                     help="cap on the prototypes (columns of A) for large datasets; 0: no cap")
    run.add_argument("--shards", type=int, default=1, help="row shards of the affinity matrix")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--max-iter", type=int, default=100, help="EM iterations at most")
    run.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS,
                     help="graph-em (default: affinity rows + bilinear descriptors, spectral "
                          "start, Gaussian-mixture EM), em (the paper's GOGGLES), kmeans "
                          "(AF+KM), em-random (random start), pgm "
                          "(AF+PGM, Snorkel's LabelModel), backbone (its ImageNet classifier)")
    run.add_argument("--descriptor-backbone", default=DEFAULT_DESCRIPTOR_BACKBONE,
                     choices=BACKBONES + ("none",),
                     help="graph-em: a second network whose bilinear descriptors join the "
                          "graph (default mobilenet_v2: +25% extract time beside VGG-16); none "
                          "to skip it")
    run.add_argument("--dev-labels", default="", help="CSV/Parquet of uri,label naming clusters")
    run.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    run.add_argument("--runner", default="local", choices=RUNNERS,
                     help="local: the Kubeflow pipeline with kfp's local runner (default); "
                          "docker: the same with kfp's DockerRunner and the project image; "
                          "inprocess: call the library directly (library users, debugging)")
    run.add_argument("--pipeline-root", default="",
                     help="local/docker runners: folder for kfp's task outputs (default: a "
                          "temporary folder, removed after a successful run)")
    run.add_argument("--cache", action="store_true",
                     help="local/docker runners: reuse task outputs of earlier runs with the "
                          "same inputs under --pipeline-root (kfp's local cache)")

    compile_ = sub.add_parser("compile", help="compile the Kubeflow pipeline to a YAML package")
    compile_.add_argument("--output", default="goggles_pipeline.yaml", help="package to write")
    compile_.add_argument("--profile", default="default", choices=("default", "dev", "prod"),
                          help="cluster settings matching k8s/overlays/<profile>")

    submit = sub.add_parser("submit", help="start one run on a Kubeflow Pipelines cluster")
    _cluster_arguments(submit)
    submit.add_argument("--run-name", default="", help="name of the run (default: KFP's)")

    schedule = sub.add_parser("schedule", help="create a recurring run on a KFP cluster")
    _cluster_arguments(schedule)
    schedule.add_argument("--cron", required=True,
                          help="KFP's six-field cron, seconds first: '0 0 3 * * *' is 03:00 "
                               "every day")
    schedule.add_argument("--job-name", default="goggles-recurring",
                          help="name of the recurring run")
    return parser


def _cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", required=True,
                        help="URL of the Kubeflow Pipelines API, e.g. http://localhost:8080")
    parser.add_argument("--experiment", default="goggles", help="experiment to run in")
    parser.add_argument("--namespace", default="", help="KFP namespace (multi-user clusters)")
    parser.add_argument("--package", default="",
                        help="a compiled package to send (default: compile pipeline.py now)")
    parser.add_argument("--profile", default="default", choices=("default", "dev", "prod"),
                        help="with no --package: cluster settings matching k8s/overlays/<profile>")
    parser.add_argument("--service-account", default="",
                        help="run the pods as this ServiceAccount (k8s/base: goggles-runner)")
    parser.add_argument("parameters", nargs="*", metavar="PARAM=VALUE",
                        help="pipeline parameters, e.g. source_uri=gs://bucket/images "
                             "num_classes=3 num_shards=8")


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    from goggles.runners import RunParameters, run_inprocess

    params = RunParameters(
        source_uri=args.source, output_uri=args.output, num_classes=args.num_classes,
        backbone=args.backbone, weights_uri=args.weights, top_k=args.top_k,
        max_prototypes=args.max_prototypes,
        num_shards=args.shards, method=args.method, max_iter=args.max_iter, seed=args.seed,
        dev_labels_uri=args.dev_labels, device=args.device,
        descriptor_backbone=args.descriptor_backbone)
    params.validate()
    if args.runner == "inprocess":
        metrics = run_inprocess(params)
    else:
        from goggles.kfp_runner import run_pipeline

        metrics = run_pipeline(params, runner=args.runner, pipeline_root=args.pipeline_root,
                               enable_caching=args.cache)
    summary = {k: metrics[k] for k in ("n_images", "n_rejected", "num_classes", "num_prototypes",
                                       "em_iterations", "converged", "accuracy",
                                       "accuracy_kmeans", "timings_s", "pipeline_seconds")
               if k in metrics}
    print(json.dumps(summary, indent=2))
    print(f"labels: {args.output.rstrip('/')}/labels.parquet")
    print(f"report: {args.output.rstrip('/')}/report.html")
    return 0


def _compile(args: argparse.Namespace) -> int:
    from goggles.kfp_client import compile_package

    print(compile_package(args.output, args.profile))
    return 0


def _submit(args: argparse.Namespace) -> int:
    from goggles.kfp_client import submit

    run_id = submit(args.host, args.parameters, experiment=args.experiment,
                    run_name=args.run_name, package_path=args.package, namespace=args.namespace,
                    profile=args.profile, service_account=args.service_account)
    print(f"run: {run_id}")
    print(f"see: {args.host.rstrip('/')}/#/runs/details/{run_id}")
    return 0


def _schedule(args: argparse.Namespace) -> int:
    from goggles.kfp_client import schedule

    recurring_id = schedule(args.host, args.cron, args.parameters, experiment=args.experiment,
                            job_name=args.job_name, package_path=args.package,
                            namespace=args.namespace, profile=args.profile,
                            service_account=args.service_account)
    print(f"recurring run: {recurring_id} ({args.cron})")
    print(f"see: {args.host.rstrip('/')}/#/recurringruns/details/{recurring_id}")
    return 0


COMMANDS = {"run": _run, "compile": _compile, "submit": _submit, "schedule": _schedule}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, ValueError) as error:
        print(f"goggles: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - one clear line, details with -v
        logger.debug("failure", exc_info=True)
        print(f"goggles: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
