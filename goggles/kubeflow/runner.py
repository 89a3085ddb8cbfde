"""Run the Kubeflow pipeline (:mod:`goggles.kubeflow.pipeline`) on this machine with kfp's local
runners.

``run_pipeline(params, runner="local")`` runs the compiled DAG — the one a cluster runs, with its
ParallelFor fan-out and ``dsl.Collected`` fan-in — through ``kfp.local``:

* ``local``: :class:`kfp.local.SubprocessRunner` with ``use_venv=False``; every task is a
  subprocess of this Python, which already has ``goggles`` installed, so no task installs
  anything and a task starts in well under a second (plus its own imports).
* ``docker``: :class:`kfp.local.DockerRunner`; every task runs in the project image
  (:mod:`goggles.kubeflow.components.image`), which must have been built from ``docker/``
  (``make images``).
  Tasks run as a non-root user (this user's uid, or the image's own user when this is root),
  see the local inputs read-only at their own paths (with the targets of symlinks in the
  source), and get no network at all when every URI they read is local.

Afterwards the run's artifacts are copied out of kfp's ``pipeline_root`` into the output URI
(any fsspec URI) in the same layout :func:`goggles.pipeline.inprocess.run_inprocess` writes:
``manifest.parquet``, ``labels.parquet``, ``metrics.json``, ``report.html``, ``artifacts/`` and,
when the run trains one, ``model/``; and each stage's record under the keys the in-process runner
uses (:func:`goggles.pipeline.inprocess.record_finished_run`). A rerun into the same output whose
ingest and extraction keys are unchanged (the same images, backbone and extraction parameters:
a new dev-label file, another method, ``--train``) runs no pipeline: the stages after the
extraction are reused or redone in this process (:func:`goggles.pipeline.inprocess.run_stages`),
as ``--runner inprocess`` would.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import logging
import os
import shutil
import sys
import time
import warnings
from typing import Any

from goggles.io import listing, storage
from goggles.io.artifacts import output_paths
from goggles.io.lock import output_lock
from goggles.io.uris import redact
from goggles.kubeflow import scratch
from goggles.kubeflow.console import ANSI, TaskConsole
from goggles.parameters import RunParameters, spec
from goggles.pipeline.extract import part_uri
from goggles.pipeline.inprocess import extraction_reusable, record_finished_run, run_stages
from goggles.pipeline.wiring import check_run

logger = logging.getLogger(__name__)

RUNNERS = ("local", "docker")


class PipelineRunError(RuntimeError):
    """The local pipeline could not start or a task failed; the message says what to do."""


def _absolute(uri: str) -> str:
    """Local paths become absolute (tasks may run elsewhere, e.g. in a container)."""
    if not uri or not storage.is_local(uri):
        return uri
    return os.path.abspath(storage.local_path(uri))


def pipeline_arguments(params: RunParameters) -> dict[str, Any]:
    """The pipeline's arguments for a run: every pipeline parameter of the declaration
    (:mod:`goggles.parameters`), local URIs made absolute."""
    return {name: _absolute(value) if spec(name).uri else value
            for name, value in params.pipeline_arguments().items()}


# -- runners -------------------------------------------------------------------------------------

def _symlink_targets(folder: str) -> list[str]:
    """Folders outside ``folder`` that symlinks under it point into (a container sees only what
    is mounted); nested ones are dropped, as their parent's mount covers them."""
    targets: set[str] = set()
    root = os.path.realpath(folder)
    visited = {root}
    for current, folders, files in os.walk(folder, followlinks=True):
        for name in folders + files:
            path = os.path.join(current, name)
            if os.path.islink(path):
                real = os.path.realpath(path)
                targets.add(real if os.path.isdir(real) else os.path.dirname(real))
        # a symlinked folder is walked once, however many links (or loops) lead to it
        unseen = [name for name in folders
                  if os.path.realpath(os.path.join(current, name)) not in visited]
        visited.update(os.path.realpath(os.path.join(current, name)) for name in unseen)
        folders[:] = unseen
    outside = sorted(t for t in targets if t != root and not t.startswith(root + os.sep))
    return [t for i, t in enumerate(outside)
            if not any(t.startswith(kept + os.sep) for kept in outside[:i])]


def _symlink_aliases(folder: str) -> list[tuple[str, str]]:
    """(real folder, path as the link names it) for symlinks under ``folder`` whose target path
    itself runs through a symlink (e.g. ``../shared`` linked elsewhere): a container resolves a
    link's text inside its own filesystem, so the real folder is mounted at that path too."""
    aliases: dict[str, str] = {}
    root = os.path.realpath(folder)
    for current, folders, files in os.walk(folder, followlinks=False):
        for name in folders + files:
            path = os.path.join(current, name)
            if not os.path.islink(path):
                continue
            named = os.path.normpath(os.path.join(current, os.readlink(path)))
            named_dir = named if os.path.isdir(named) else os.path.dirname(named)
            real_dir = os.path.realpath(named_dir)
            if named_dir != real_dir and not named_dir.startswith(root + os.sep):
                aliases[named_dir] = real_dir
    return sorted((real, named) for named, real in aliases.items())


def _container_user(client: Any, image: str, pipeline_root: str) -> str:
    """The non-root ``uid:gid`` tasks run as: this user's, or the image's own user when this is
    root (then ``pipeline_root`` is handed to that user, who writes the task outputs)."""
    if os.getuid() != 0:
        return f"{os.getuid()}:{os.getgid()}"
    user = str(client.images.get(image).attrs.get("Config", {}).get("User") or "")
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or int(uid) == 0 or (gid and not gid.isdigit()):
        raise PipelineRunError(
            f"image {image} runs as {user or 'root'!r}; the goggles images run as a numeric "
            "non-root user (docker/Dockerfile's USER): rebuild them with docker/build.sh")
    os.chown(pipeline_root, int(uid), int(gid or uid))
    return f"{uid}:{gid or uid}"


def _docker_runner(params: RunParameters, images: tuple[str, ...], pipeline_root: str) -> Any:
    """A DockerRunner for the project images: non-root, the local inputs mounted read-only,
    and no network when every input is local."""
    from kfp import local

    try:
        # by name: the repository's docker/ folder must not pass for the Docker SDK
        docker: Any = importlib.import_module("docker")
        for submodule in ("docker.errors", "docker.types"):
            importlib.import_module(submodule)
    except ImportError as error:
        raise PipelineRunError("--runner docker needs the Docker SDK: "
                               "pip install 'goggles[docker]' (or use --runner local)") from error
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as error:
        raise PipelineRunError(f"cannot reach the Docker daemon ({error}); start Docker, or use "
                               "--runner local") from error
    try:
        missing = []
        for image in images:
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                missing.append(image)
        if missing:
            raise PipelineRunError(
                f"image(s) {', '.join(missing)} not found in the local Docker daemon; build "
                "them with `make images` (docker/build.sh, which tags them so), or use "
                "--runner local")
        user = _container_user(client, images[0], pipeline_root)
    finally:
        client.close()
    inputs = [uri for uri in (params.source_uri, params.dev_labels_uri, params.weights_uri) if uri]
    paths = [_absolute(uri) for uri in inputs if storage.is_local(uri)]
    # what symlinks in the source lead to is mounted only when the run follows them
    follows = params.follow_symlinks and storage.is_local(params.source_uri)
    if follows:
        paths += _symlink_targets(_absolute(params.source_uri))
    mounts = [docker.types.Mount(target=path, source=path, type="bind", read_only=True)
              for path in dict.fromkeys(paths)]
    if follows:
        mounts += [docker.types.Mount(target=named, source=real, type="bind", read_only=True)
                   for real, named in _symlink_aliases(_absolute(params.source_uri))
                   if named not in paths]
    cache = params.feature_cache_uri
    if cache and storage.is_local(cache):  # the feature cache is written: mounted read-write
        os.makedirs(_absolute(cache), exist_ok=True)
        mounts.append(docker.types.Mount(target=_absolute(cache), source=_absolute(cache),
                                         type="bind", read_only=False))
    arguments: dict[str, Any] = {"mounts": mounts, "user": user}
    if all(storage.is_local(uri) for uri in [*inputs, *([cache] if cache else [])]):
        # the tasks read only mounted files and kfp's pipeline_root: they need no network
        arguments["network_mode"] = "none"
    if params.device == "cuda":
        arguments["device_requests"] = [
            docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
    return local.DockerRunner(**arguments)


def _runner(kind: str, params: RunParameters, images: tuple[str, ...], pipeline_root: str) -> Any:
    from kfp import local

    if kind == "local":
        return local.SubprocessRunner(use_venv=False)
    if kind == "docker":
        return _docker_runner(params, images, pipeline_root)
    raise ValueError(f"unknown runner {kind!r}; choose one of {', '.join(RUNNERS)} "
                     "(or run_inprocess for the in-process path)")


@contextlib.contextmanager
def _quiet_local_warnings():  # type: ignore[no-untyped-def]
    """Silence kfp.local's notes that are expected here: cluster-only task settings (GPU,
    requests) do nothing locally, and the project image name has no 'python' in it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*have no effect in the current local runner")
        warnings.filterwarnings("ignore", message=r".*non-Python base image")
        yield


def run_pipeline(params: RunParameters, runner: str = "local", *, pipeline_root: str = "",
                 enable_caching: bool = False, keep_pipeline_root: bool = False,
                 verbose: bool = False) -> dict[str, Any]:
    """Run the pipeline with kfp's local runner; write the run's files into ``params.output_uri``.

    Parameters
    ----------
    params : the run's parameters (the pipeline's parameters plus the output URI).
    runner : ``local`` (subprocesses of this Python) or ``docker`` (the project image).
    pipeline_root : local folder for kfp's task outputs; default a temporary folder, removed
        after a successful run unless ``keep_pipeline_root``.
    enable_caching : reuse outputs of tasks already run with the same inputs under the same
        ``pipeline_root`` (kfp's local cache, kept in ``pipeline_root/.kfp_cache``).
    verbose : show kfp's own log and every task's output (else the console lines of
        :class:`TaskConsole`, and the log of a task that fails).

    Returns
    -------
    The metrics written to ``metrics.json``.
    """
    if runner not in RUNNERS:
        raise ValueError(f"unknown runner {runner!r}; choose one of {', '.join(RUNNERS)}")
    # one listing of the source for this process: the checks, the resume keys and the record
    # of the finished run (the pipeline's own tasks list it in the cluster's pods)
    source = listing.SourceListing(params.source_uri)
    configs = check_run(params, source=source)
    with output_lock(params.output_uri,
                     owner_note=f"goggles run ({runner} runner) of {redact(params.source_uri)}"):
        ingest_cfg = configs["ingest"]
        # listed before the pipeline runs: a file rewritten meanwhile reads as changed next time
        source.files(ingest_cfg.extensions, follow_symlinks=ingest_cfg.follow_symlinks)
        if extraction_reusable(params, configs, source=source):
            # OUT holds this run's ingest and extraction (same keys, by any runner): only what
            # follows them is redone, by the same stage functions, here
            logger.info("reusing the ingest and extraction in %s (same inputs and parameters); "
                        "running the stages after them in this process",
                        redact(params.output_uri))
            return run_stages(params, configs, runner=runner, source=source)
        metrics = _run_locked(params, runner, pipeline_root, enable_caching,
                              keep_pipeline_root, verbose)
        record_finished_run(params, configs, metrics, source=source)
        return metrics


def _run_locked(params: RunParameters, runner: str, pipeline_root: str, enable_caching: bool,
                keep_pipeline_root: bool, verbose: bool) -> dict[str, Any]:
    from kfp import local

    from goggles.kubeflow import pipeline as module
    temporary = not pipeline_root
    root = os.path.abspath(pipeline_root or scratch.make_scratch())
    os.makedirs(root, exist_ok=True)
    try:
        kfp_runner = _runner(runner, params, tuple(module.IMAGES), root)
    except BaseException:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
        raise
    local.init(runner=kfp_runner, pipeline_root=root, raise_on_error=True,
               enable_caching=enable_caching)
    arguments = pipeline_arguments(params)
    logger.info("running pipeline %r with kfp's %s runner (pipeline_root %s)",
                module.PIPELINE_NAME, runner, root)
    start = time.perf_counter()
    original_print = builtins.print
    # task logs go to stderr (all of them with verbose, else the console lines), so stdout
    # carries only what the caller prints
    tasks = TaskConsole(verbose=verbose)
    try:
        with _quiet_local_warnings(), contextlib.redirect_stdout(tasks), \
                scratch.tasks_die_with_this_process():
            task = module.goggles_pipeline(**arguments)
    except RuntimeError as error:
        message = ANSI.sub("", str(error))
        scratch.keep(root)
        where = "above"
        if not verbose:
            log = os.path.join(root, "goggles-run.log")
            with open(log, "w", encoding="utf-8") as file:
                file.write("\n".join(tasks.lines) + "\n")
            sys.stderr.write("\n".join(tasks.lines[-40:]) + "\n")
            where = f"above (its end; all of it in {log}, or rerun with goggles -v)"
        raise PipelineRunError(f"{message} Its log is {where}; the task outputs are kept in "
                               f"{root}") from error
    finally:
        # kfp.local indents task logs by swapping builtins.print per task; two ParallelFor
        # tasks finishing at once can leave the indenting print installed for good
        builtins.print = original_print
    seconds = round(time.perf_counter() - start, 3)
    metrics = assemble_outputs(task.outputs, params.output_uri, runner=runner,
                               pipeline_seconds=seconds)
    if temporary and not keep_pipeline_root:
        shutil.rmtree(root, ignore_errors=True)
    tasks.finish()
    logger.info("pipeline finished in %.1f s; outputs in %s", seconds, params.output_uri)
    return metrics


# -- outputs -------------------------------------------------------------------------------------

def _copy(source: str, destination: str) -> None:
    """Copy a local file or folder tree (kfp's pipeline_root) to any URI."""
    if os.path.isdir(source):
        for folder, _, files in os.walk(source):
            relative = os.path.relpath(folder, source)
            for name in sorted(files):
                parts = [name] if relative == "." else [*relative.split(os.sep), name]
                storage.write_bytes(storage.join(destination, *parts),
                                    storage.read_bytes(os.path.join(folder, name)))
    else:
        storage.write_bytes(destination, storage.read_bytes(source))


def assemble_outputs(outputs: dict[str, Any], output_uri: str, *, runner: str,
                     pipeline_seconds: float) -> dict[str, Any]:
    """Copy the pipeline's output artifacts into ``output_uri``
    (:func:`goggles.io.artifacts.output_paths`).

    ``outputs`` maps the pipeline's outputs (``manifest``, ``features``, ``prototypes``,
    ``labels``, ``inference``, ``metrics``, ``report``) to kfp artifacts with local paths, and
    ``model_uri`` to the train task's model folder (``""``: the run trained none); the
    extraction parts' maps through the ``maps_uris`` the gather task recorded, the affinity
    shards through the ``affinity_uris`` the infer task recorded.
    """
    paths = output_paths(output_uri)
    for output, key in (("manifest", "manifest"), ("labels", "labels"), ("report", "report"),
                        ("features", "features"), ("prototypes", "prototypes"),
                        ("inference", "inference")):
        _copy(outputs[output].path, paths[key])
    for shard_id, uri in enumerate(outputs["features"].metadata.get("maps_uris", [])):
        _copy(uri, part_uri(paths["features"], shard_id))
    for uri in outputs["inference"].metadata.get("affinity_uris", []):
        meta = storage.read_json(storage.join(uri, "meta.json"))
        _copy(uri, storage.join(paths["affinity"], f"shard-{int(meta['shard_id']):05d}"))
    if outputs.get("model_uri"):
        _copy(str(outputs["model_uri"]), paths["model"])
    metrics: dict[str, Any] = storage.read_json(outputs["metrics"].path)
    metrics["runner"] = runner
    metrics["pipeline_seconds"] = pipeline_seconds
    storage.write_json(metrics, paths["metrics"])
    return metrics
