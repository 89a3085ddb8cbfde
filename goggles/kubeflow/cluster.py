"""Send the pipeline to a Kubeflow Pipelines cluster through :class:`kfp.Client`.

``compile_package`` writes the KFP IR YAML of the pipeline (:mod:`goggles.kubeflow.pipeline`);
``submit`` starts one run of it and ``schedule`` a recurring run (KFP's six-field cron:
``second minute hour day month weekday``). Parameters are ``PARAM=VALUE`` strings, typed and
checked against the package's own parameter definitions and the stage configs before anything
reaches the server.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from goggles.config import ConfigError
from goggles.parameters import RunParameters, names
from goggles.pipeline.wiring import check_parameters

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "goggles"
DEFAULT_JOB_NAME = "goggles-recurring"
_PARSERS: dict[str, Callable[[str], Any]] = {
    "NUMBER_INTEGER": int, "NUMBER_DOUBLE": float, "STRING": str,
    "BOOLEAN": lambda v: {"true": True, "false": False}[v.lower()]}


class SubmitError(ValueError):
    """Parameters or a schedule that cannot work; the message says how to fix them."""


def compile_package(package_path: str = "", profile: str = "default",
                    pipeline: str = "labels") -> str:
    """Compile the pipeline (``labels``: the labeling run; ``apply``: labeling new images with
    a trained run, :mod:`goggles.kubeflow.apply_pipeline`) with a cluster ``profile``
    (``default``, ``dev``, ``prod``: see k8s/overlays) to ``package_path`` (default: a
    temporary file); returns the path."""
    if pipeline == "apply":
        from goggles.kubeflow.apply_pipeline import compile_apply_pipeline as compile_pipeline
    elif pipeline == "labels":
        from goggles.kubeflow.pipeline import compile_pipeline
    else:
        raise SubmitError(f"unknown pipeline {pipeline!r}; choose labels or apply")
    if not package_path:
        handle, package_path = tempfile.mkstemp(prefix="goggles-pipeline-", suffix=".yaml")
        os.close(handle)
    return str(compile_pipeline(package_path, profile))


def profile_service_account(profile: str) -> str:
    """Who a profile's runs run as when no service account is given: ``goggles-runner`` (the
    overlays' ServiceAccount) for ``dev`` and ``prod``, ``""`` (KFP's default: the namespace's
    ``default-editor`` in multi-user Kubeflow) for ``default``."""
    from goggles.kubeflow.pipeline import PROFILES

    if profile not in PROFILES:
        raise SubmitError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return str(PROFILES[profile]["service_account"])


def package_parameters(package_path: str) -> dict[str, dict[str, Any]]:
    """The root parameters of a compiled package: ``{name: {"type": ..., "default": ...}}``."""
    with open(package_path, encoding="utf-8") as handle:
        spec = next(iter(yaml.safe_load_all(handle)))
    definitions = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    return {name: {"type": d.get("parameterType", "STRING"), "default": d.get("defaultValue")}
            for name, d in definitions.items()}


def parse_arguments(assignments: Sequence[str], package_path: str) -> dict[str, Any]:
    """Turn ``PARAM=VALUE`` strings into typed pipeline arguments and check them.

    Raises
    ------
    SubmitError
        An assignment without ``=``, an unknown parameter, a value of the wrong type, a value
        the stage configs reject, or no ``source_uri``.
    """
    parameters = package_parameters(package_path)
    arguments: dict[str, Any] = {}
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise SubmitError(f"{assignment!r} is not PARAM=VALUE, e.g. num_classes=3")
        if name not in parameters:
            raise SubmitError(f"unknown pipeline parameter {name!r}; the pipeline takes "
                              f"{', '.join(sorted(parameters))}")
        kind = parameters[name]["type"]
        try:
            arguments[name] = _PARSERS.get(kind, str)(value)
        except (ValueError, KeyError) as error:
            raise SubmitError(f"{name}={value!r}: expected a {kind.lower().replace('_', ' ')}"
                              ) from error
    merged = {name: p["default"] for name, p in parameters.items()} | arguments
    if not merged.get("source_uri"):
        raise SubmitError("source_uri is required: pass source_uri=gs://bucket/images (a URI "
                          "the cluster's pods can read)")
    if "model_uri" in parameters:  # the apply pipeline (goggles compile --pipeline apply)
        _check_apply(merged)
    known = names()
    try:
        check_parameters(RunParameters(**{k: v for k, v in merged.items() if k in known}),
                         local_output=False)
    except (ConfigError, TypeError) as error:
        raise SubmitError(str(error)) from error
    return arguments


def _check_apply(merged: dict[str, Any]) -> None:
    """The apply pipeline's own parameters: a model URI the pods may open, a known labeler."""
    from goggles.io import uris
    from goggles.training.config import LABELERS

    model = str(merged.get("model_uri") or "")
    if not model:
        raise SubmitError("model_uri is required: pass model_uri=gs://bucket/run (a finished "
                          "run's output, or its model/ folder, that the pods can read)")
    reason = uris.refusal(model)
    if reason is not None:
        raise SubmitError(f"model_uri {uris.redact(model)!r}: {reason}")
    if merged.get("labeler", "auto") not in LABELERS:
        raise SubmitError(f"labeler={merged.get('labeler')!r}: choose one of "
                          f"{', '.join(LABELERS)}")


def check_cron(cron: str) -> str:
    """KFP's cron has six fields, seconds first: ``"0 0 3 * * *"`` is every day at 03:00."""
    parts = cron.split()
    if len(parts) != 6:
        raise SubmitError(f"cron {cron!r} has {len(parts)} field(s); KFP wants six, seconds "
                          "first: 'second minute hour day month weekday', e.g. '0 0 3 * * *' "
                          "for 03:00 every day")
    return " ".join(parts)


def make_client(host: str, namespace: str = "") -> Any:
    """A :class:`kfp.Client` for the KFP API at ``host``."""
    import kfp

    if not host:
        raise SubmitError("--host is required: the URL of the Kubeflow Pipelines API, e.g. "
                          "http://localhost:8080 after `kubectl port-forward svc/ml-pipeline-ui "
                          "8080:80 -n kubeflow`")
    return kfp.Client(host=host, namespace=namespace or "kubeflow")


def submit(host: str, assignments: Sequence[str], *, experiment: str = DEFAULT_EXPERIMENT,
           run_name: str = "", package_path: str = "", namespace: str = "",
           profile: str = "default", service_account: str = "") -> str:
    """Start one run of the pipeline on the cluster at ``host``; returns the run id.
    ``service_account`` runs the pods as that ServiceAccount; without it, the profile's
    (:func:`profile_service_account`: goggles-runner for dev and prod)."""
    service_account = service_account or profile_service_account(profile)
    package = package_path or compile_package(profile=profile)
    try:
        arguments = parse_arguments(assignments, package)
        client = make_client(host, namespace)
        result = client.create_run_from_pipeline_package(
            package, arguments=arguments, run_name=run_name or None, experiment_name=experiment,
            service_account=service_account or None)
    finally:
        if not package_path:
            os.remove(package)
    logger.info("submitted run %s in experiment %r as %s", result.run_id, experiment,
                service_account or "the namespace's default service account")
    return str(result.run_id)


def schedule(host: str, cron: str, assignments: Sequence[str], *,
             experiment: str = DEFAULT_EXPERIMENT, job_name: str = DEFAULT_JOB_NAME,
             package_path: str = "", namespace: str = "", max_concurrency: int = 1,
             profile: str = "default", service_account: str = "") -> str:
    """Create a recurring run on ``cron`` (six fields); returns the recurring run's id.
    ``service_account`` as for :func:`submit`."""
    cron = check_cron(cron)
    service_account = service_account or profile_service_account(profile)
    package = package_path or compile_package(profile=profile)
    try:
        arguments = parse_arguments(assignments, package)
        client = make_client(host, namespace)
        found = client.create_experiment(name=experiment)
        recurring = client.create_recurring_run(
            experiment_id=found.experiment_id, job_name=job_name, cron_expression=cron,
            params=arguments, pipeline_package_path=package, max_concurrency=max_concurrency,
            no_catchup=True, service_account=service_account or None)
    finally:
        if not package_path:
            os.remove(package)
    logger.info("scheduled %r on %r in experiment %r as %s", job_name, cron, experiment,
                service_account or "the namespace's default service account")
    return str(recurring.recurring_run_id)
