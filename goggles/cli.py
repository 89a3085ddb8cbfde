"""The ``goggles`` command.

    goggles run SOURCE --num-classes K --output OUT [--backbone vgg16] [--weights URI]
                [--top-k 5] [--max-prototypes P] [--shards S] [--seed 0] [--dev-labels FILE]
                [--method graph-em] [--descriptor-backbone mobilenet_v2] [--device auto]
                [--runner local|docker|inprocess] [--pipeline-root DIR] [--cache]
    goggles train OUT [--holdout 0.33] [--head linear|mlp] [--targets soft|hard]
    goggles apply MODEL SOURCE --output OUT [--labeler auto|end-model|affinity] [--device auto]
    goggles compile [--output goggles_pipeline.yaml] [--pipeline labels|apply]
                    [--image-repository R --image-tag T] ...
    goggles submit  --host URL [--experiment NAME] [--no-cache] [PARAM=VALUE ...]
    goggles schedule --host URL --cron "0 0 3 * * *" [PARAM=VALUE ...]
    goggles upload  --host URL [--pipeline-name goggles] [--version NAME]
    goggles plan --images N [--num-classes K] [--shards S] [--max-prototypes P] [--gpu] [--json]
    goggles export OUT --format imagefolder|csv|jsonl|label-studio|huggingface --output DEST
                   [--min-confidence P] [--copy] [--label-studio-root DIR]

The options of ``goggles run`` are the run parameters of :mod:`goggles.parameters`, one each. An
error is one line on stderr naming the problem and the fix (with ``-v``, its traceback too): exit
2 for a bad parameter or input, 1 for anything else.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from goggles import __version__, parameters
from goggles import commands as run_commands
from goggles.config import ConfigError, StageError
from goggles.io.uris import scrub
from goggles.kubeflow import settings as cluster_settings
from goggles.parameters import RunParameters

logger = logging.getLogger("goggles")

RUNNERS = ("local", "docker", "inprocess")


def _parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = run_commands.Parser(
        prog="goggles", description="Label image datasets automatically with affinity coding.")
    parser.add_argument("--version", action="version", version=f"goggles {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="label the images under SOURCE on this machine",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog=_methods_help())
    _run_parameters(run)
    run.add_argument("--runner", default="local", choices=RUNNERS,
                     help="local: the Kubeflow pipeline with kfp's local runner (default); "
                          "docker: the same with kfp's DockerRunner and the project image; "
                          "inprocess: call the library directly (library users, debugging)")
    run.add_argument("--pipeline-root", default="", metavar="DIR",
                     help="local/docker runners: folder for kfp's task outputs (default: a "
                          "temporary folder, removed after a successful run)")
    run.add_argument("--break-lock", action="store_true",
                     help="remove the lock another run left on OUT (only when that run is no "
                          "longer running: two runs into one OUT would mix their files)")
    run.add_argument("--cache", action="store_true",
                     help="local/docker runners: reuse task outputs of earlier runs with the "
                          "same inputs under --pipeline-root (kfp's local cache)")

    run_commands.add_train_and_apply(sub)

    compile_ = sub.add_parser("compile", help="compile the Kubeflow pipeline to a YAML package")
    compile_.add_argument("--output", default="goggles_pipeline.yaml", help="package to write")
    compile_.add_argument("--pipeline", default="labels", choices=("labels", "apply"),
                          help="labels: the labeling run (default); apply: label new images "
                               "with a trained run (for scheduled runs; parameters model_uri, "
                               "source_uri, labeler, device, follow_symlinks)")
    compile_.add_argument("--profile", default="default", choices=("default", "dev", "prod"),
                          help="cluster settings matching k8s/overlays/<profile>")
    cluster_settings.add_arguments(compile_)

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
    _upload_arguments(sub)
    run_commands.add_export(sub)
    run_commands.add_suggest(sub)
    run_commands.add_plan(sub)
    return parser


def _upload_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    upload = sub.add_parser("upload", help="store the pipeline on a KFP cluster as a pipeline "
                                           "and a version of it")
    _connection_arguments(upload)
    upload.add_argument("--pipeline-name", default="goggles",
                        help="the pipeline to add a version to (created when new)")
    upload.add_argument("--version", default="", metavar="NAME",
                        help="the version's name (default: goggles' version and the package's "
                             "digest; an existing version of that name is kept, not replaced)")
    upload.add_argument("--description", default="", help="the version's description")


def _flag(name: str) -> str:
    """The ``goggles run`` option of run parameter ``name``."""
    flag = parameters.spec(name).flag
    return flag or "--" + name.replace("_", "-")


def _run_parameters(run: argparse.ArgumentParser) -> None:
    """One option per run parameter, from the declaration (:mod:`goggles.parameters`)."""
    from goggles.inference.registry import METHODS

    types = parameters.types()
    for item in parameters.declared():
        spec = parameters.spec(item)
        help_text = spec.help.replace("%", "%%")
        if spec.flag == "SOURCE":
            run.add_argument(item.name, metavar="SOURCE", help=help_text)
            continue
        if types[item.name] is bool:  # a switch: on when given
            run.add_argument(_flag(item.name), dest=item.name, action="store_true",
                             default=item.default, help=help_text)
            continue
        options: dict[str, Any] = {"dest": item.name, "type": types[item.name],
                                   "metavar": spec.metavar or ("N" if types[item.name] is int
                                                               else None)}
        if spec.required:
            options["required"] = True
        else:
            options["default"] = item.default
            if item.default != "":
                help_text += f" (default: {item.default})"
        choices = tuple(METHODS) if item.name == "method" else spec.choices
        if choices and not spec.backbone:  # a network's name is checked by parse_backbone
            options["choices"] = choices
        run.add_argument(_flag(item.name), help=help_text, **options)


def _methods_help() -> str:
    from goggles.inference.registry import METHODS

    lines = ["methods (--method):"]
    lines += [f"  {name:<10} {method.summary}" for name, method in METHODS.items()]
    return "\n".join(lines)


def _connection_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the KFP API is, how to sign in, and the package to send."""
    parser.add_argument("--host", default="",
                        help="URL of the Kubeflow Pipelines API, e.g. http://localhost:8080 "
                             "(default: $KF_PIPELINES_ENDPOINT)")
    parser.add_argument("--namespace", default="", help="KFP namespace (multi-user clusters)")
    parser.add_argument("--existing-token", default="", metavar="TOKEN",
                        help="bearer token for a multi-user install (default: "
                             "$KF_PIPELINES_TOKEN; prefer the variable: arguments are visible "
                             "to other users of this machine)")
    parser.add_argument("--cookies", default="", metavar="NAME=VALUE",
                        help="session cookie(s), e.g. authservice_session=... of a Dex login "
                             "(default: $KF_PIPELINES_COOKIES)")
    parser.add_argument("--package", default="",
                        help="a compiled package to send (default: compile the pipeline now)")
    parser.add_argument("--profile", default="default", choices=("default", "dev", "prod"),
                        help="k8s/overlays/<profile>: with no --package, compile with its "
                             "cluster settings; dev and prod run as goggles-runner")
    cluster_settings.add_arguments(parser)


def _cluster_arguments(parser: argparse.ArgumentParser) -> None:
    _connection_arguments(parser)
    parser.add_argument("--experiment", default="goggles", help="experiment to run in")
    parser.add_argument("--no-cache", action="store_true",
                        help="run every task afresh, reusing no earlier run's outputs")
    parser.add_argument("--service-account", default="", metavar="NAME",
                        help="run the pods as this ServiceAccount (default: goggles-runner "
                             "with --profile dev|prod, else the namespace's default)")
    parser.add_argument("parameters", nargs="*", metavar="PARAM=VALUE",
                        help="pipeline parameters, e.g. source_uri=gs://bucket/images "
                             "num_classes=3 num_shards=8")


class _Scrubbed(logging.Formatter):
    """Log lines with every URI in them redacted (goggles' own messages already redact; this is
    for what other libraries log)."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def _configure_logging(verbose: bool) -> None:
    """The run's console lines (``goggles.console``: each stage's start and end, progress) bare
    on stderr; other messages from WARNING, with time and source. With -v, goggles' messages
    from DEBUG, kfp's and other libraries' from INFO, and the local runner's task output
    (:class:`goggles.kubeflow.console.TaskConsole`). The loggers keep their levels (INFO) either
    way: what reaches the terminal is set on the handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Scrubbed("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG if verbose else logging.WARNING)
    handler.addFilter(lambda record: not record.name.startswith("goggles.console"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    for name in ("goggles", "kfp"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)
    lines = logging.getLogger("goggles.console")
    lines.setLevel(logging.INFO)
    if not any(isinstance(h, _Bare) for h in lines.handlers):
        bare = _Bare()
        bare.setFormatter(_Scrubbed("%(message)s"))
        lines.addHandler(bare)


class _Bare(logging.StreamHandler):  # type: ignore[type-arg]
    """The console lines on whatever ``sys.stderr`` is when each is written."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _run(args: argparse.Namespace) -> int:
    from goggles.pipeline.console import closing_lines
    from goggles.pipeline.inprocess import run_inprocess

    params = RunParameters(**{name: getattr(args, name) for name in parameters.names()})
    source = None  # the run's listing of its source, begun by the checks; the run reuses it
    if args.break_lock:
        from goggles.io.listing import SourceListing
        from goggles.io.lock import break_lock
        from goggles.pipeline.wiring import absolute_uris, check_run

        # every other check first: a run that cannot start must not have taken the lock away
        checked = absolute_uris(params)
        source = SourceListing(checked.source_uri)
        check_run(checked, source=source)
        holder = break_lock(params.output_uri)
        if holder is not None:
            logger.warning("removed the lock of %s held by pid %s on %s since %s",
                           params.output_uri, holder.pid, holder.host, holder.started_at)
    if args.runner == "inprocess":
        metrics = run_inprocess(params, source=source)
    else:
        from goggles.kubeflow.runner import run_pipeline

        metrics = run_pipeline(params, runner=args.runner, pipeline_root=args.pipeline_root,
                               enable_caching=args.cache, verbose=args.verbose)
    if args.verbose:
        summary = {k: metrics[k] for k in (
            "n_images", "n_rejected", "num_classes", "num_prototypes", "em_iterations",
            "converged", "accuracy", "estimated_accuracy", "accuracy_kmeans", "timings_s",
            "pipeline_seconds", "features_computed", "features_reused") if k in metrics}
        print(json.dumps(summary, indent=2))
    print("\n".join(closing_lines(params.output_uri, metrics)))
    return 0


def _compile(args: argparse.Namespace) -> int:
    from goggles.kubeflow.cluster import compile_package

    print(compile_package(args.output, args.profile, cluster_settings.from_arguments(args),
                          pipeline=args.pipeline))
    return 0


def _submit(args: argparse.Namespace) -> int:
    from goggles.kubeflow.cluster import submit

    run_id = submit(args.host, args.parameters, experiment=args.experiment,
                    run_name=args.run_name, package_path=args.package, namespace=args.namespace,
                    profile=args.profile, service_account=args.service_account,
                    **_cluster_options(args))
    print(f"run: {run_id}")
    print(f"see: {_host(args)}/#/runs/details/{run_id}")
    return 0


def _schedule(args: argparse.Namespace) -> int:
    from goggles.kubeflow.cluster import schedule

    recurring_id = schedule(args.host, args.cron, args.parameters, experiment=args.experiment,
                            job_name=args.job_name, package_path=args.package,
                            namespace=args.namespace, profile=args.profile,
                            service_account=args.service_account, **_cluster_options(args))
    print(f"recurring run: {recurring_id} ({args.cron})")
    print(f"see: {_host(args)}/#/recurringruns/details/{recurring_id}")
    return 0


def _host(args: argparse.Namespace) -> str:
    """The KFP host a command talked to: ``--host`` or ``$KF_PIPELINES_ENDPOINT``."""
    import os

    return str(args.host or os.environ.get("KF_PIPELINES_ENDPOINT", "")).rstrip("/")


def _cluster_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options submit and schedule share: caching, cluster settings, sign-in."""
    return {"no_cache": args.no_cache, "settings": cluster_settings.from_arguments(args),
            "existing_token": args.existing_token, "cookies": args.cookies}


def _upload(args: argparse.Namespace) -> int:
    from goggles.kubeflow.cluster import upload

    pipeline_id, version_id, created = upload(
        args.host, pipeline_name=args.pipeline_name, version=args.version,
        package_path=args.package, namespace=args.namespace, profile=args.profile,
        settings=cluster_settings.from_arguments(args), description=args.description,
        existing_token=args.existing_token, cookies=args.cookies)
    print(f"pipeline: {pipeline_id} version: {version_id}"
          + ("" if created else " (already uploaded)"))
    return 0


def _say_after(work: Callable[[argparse.Namespace], str], args: argparse.Namespace) -> int:
    """Run a command of :mod:`goggles.commands` and print what it returns; exit status 0."""
    print(work(args))
    return 0


COMMANDS = {"run": _run, "compile": _compile, "submit": _submit, "schedule": _schedule,
            "upload": _upload}
COMMANDS.update({name: functools.partial(_say_after, work)
                 for name, work in run_commands.COMMANDS.items()})


def _describe(error: BaseException) -> str:
    """One line for an error: a bad parameter names its option; expected errors their message;
    anything else its type too."""
    if isinstance(error, ConfigError) and error.parameter:
        flag = _flag(error.parameter) if error.parameter in parameters.names() else ""
        return f"{flag}: {error}" if flag.startswith("--") else str(error)
    if isinstance(error, (ValueError, StageError)):
        return str(error)
    return f"{type(error).__name__}: {error}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("goggles: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - one clear line; the traceback with -v
        if args.verbose:
            print(scrub("".join(traceback.format_exception(error))), file=sys.stderr, end="")
        print(f"goggles: error: {scrub(_describe(error))}", file=sys.stderr)
        return 2 if isinstance(error, (ValueError, StageError)) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
