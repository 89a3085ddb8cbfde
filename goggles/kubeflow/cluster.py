"""Send the pipeline to a Kubeflow Pipelines cluster through :class:`kfp.Client`.

``compile_package`` writes the KFP IR YAML of the pipeline (:mod:`goggles.kubeflow.pipeline`);
``submit`` starts one run of it, ``schedule`` a recurring run (KFP's six-field cron:
``second minute hour day month weekday``) and ``upload`` stores it on the server as a pipeline
and a named version of it. Parameters are ``PARAM=VALUE`` strings, typed and checked against the
package's own parameter definitions and the stage configs before anything reaches the server.

Authentication (:func:`make_client`): a bearer token (``existing_token``, or
``$KF_PIPELINES_TOKEN``), a session cookie (``cookies``, or ``$KF_PIPELINES_COOKIES``, e.g. the
``authservice_session`` of a Dex/oauth2-proxy login), or what kfp reads itself: the
``KF_PIPELINES_*`` OAuth2/IAP client variables and, inside a cluster, the pod's projected
ServiceAccount token. ``--no-cache`` (``no_cache``) runs every task afresh.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from goggles import __version__
from goggles.config import ConfigError
from goggles.kubeflow.settings import ClusterSettings, without_caching
from goggles.parameters import RunParameters, names
from goggles.pipeline.wiring import check_parameters

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "goggles"
DEFAULT_JOB_NAME = "goggles-recurring"
DEFAULT_PIPELINE = "goggles"
TOKEN_ENV = "KF_PIPELINES_TOKEN"
COOKIES_ENV = "KF_PIPELINES_COOKIES"
ENDPOINT_ENV = "KF_PIPELINES_ENDPOINT"
_PARSERS: dict[str, Callable[[str], Any]] = {
    "NUMBER_INTEGER": int, "NUMBER_DOUBLE": float, "STRING": str,
    "BOOLEAN": lambda v: {"true": True, "false": False}[v.lower()]}


class SubmitError(ValueError):
    """Parameters or a schedule that cannot work; the message says how to fix them."""


def compile_package(package_path: str = "", profile: str = "default",
                    settings: ClusterSettings | None = None, pipeline: str = "labels") -> str:
    """Compile the pipeline (``labels``: the labeling run; ``apply``: labeling new images with
    a trained run, :mod:`goggles.kubeflow.apply_pipeline`) with a cluster ``profile``
    (``default``, ``dev``, ``prod``: see k8s/overlays) and ``settings`` (images, pull secret,
    GPU) to ``package_path`` (default: a temporary file); returns the path."""
    if pipeline == "apply":
        from goggles.kubeflow.apply_pipeline import compile_apply_pipeline as compile_pipeline
    elif pipeline == "labels":
        from goggles.kubeflow.pipeline import compile_pipeline
    else:
        raise SubmitError(f"unknown pipeline {pipeline!r}; choose labels or apply")
    if not package_path:
        handle, package_path = tempfile.mkstemp(prefix="goggles-pipeline-", suffix=".yaml")
        os.close(handle)
    try:
        return str(compile_pipeline(package_path, profile, settings))
    except BaseException:
        os.remove(package_path)
        raise


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


def make_client(host: str, namespace: str = "", *, existing_token: str = "",
                cookies: str = "") -> Any:
    """A :class:`kfp.Client` for the KFP API at ``host`` (or ``$KF_PIPELINES_ENDPOINT``),
    sending ``existing_token`` (or ``$KF_PIPELINES_TOKEN``) as a bearer token and ``cookies``
    (or ``$KF_PIPELINES_COOKIES``, ``name=value; ...``) with every request."""
    import kfp

    host = host or os.environ.get(ENDPOINT_ENV, "")
    if not host:
        raise SubmitError("--host is required: the URL of the Kubeflow Pipelines API, e.g. "
                          "http://localhost:8080 after `kubectl port-forward svc/ml-pipeline-ui "
                          f"8080:80 -n kubeflow` (or set ${ENDPOINT_ENV})")
    token = existing_token or os.environ.get(TOKEN_ENV, "")
    cookie = cookies or os.environ.get(COOKIES_ENV, "")
    return kfp.Client(host=host, namespace=namespace or "kubeflow",
                      existing_token=token or None, cookies=cookie or None)


def _check_settings(package_path: str, settings: ClusterSettings | None) -> None:
    """Cluster settings are compiled in: with a ready package they would be ignored."""
    if package_path and settings is not None and settings != ClusterSettings():
        raise SubmitError("image, pull secret and GPU options are compiled into the package: "
                          f"recompile {package_path} with them (goggles compile ...), or drop "
                          "--package to compile now")


def _caching(no_cache: bool) -> bool | None:
    """kfp's ``enable_caching``: ``False`` runs every task afresh; ``None`` keeps the
    package's per-task settings (the source listing is never cached either way)."""
    return False if no_cache else None


def _package(package_path: str, profile: str, settings: ClusterSettings | None,
             no_cache: bool) -> tuple[str, list[str]]:
    """The package to send and the temporary files to remove after: ``package_path`` or a
    fresh compilation; with ``no_cache``, a copy with caching off in every task."""
    _check_settings(package_path, settings)
    package = package_path or compile_package(profile=profile, settings=settings)
    temporary = [] if package_path else [package]
    if no_cache:
        handle, uncached = tempfile.mkstemp(prefix="goggles-pipeline-", suffix=".yaml")
        os.close(handle)
        temporary.append(uncached)
        package = without_caching(package, uncached)
    return package, temporary


def submit(host: str, assignments: Sequence[str], *, experiment: str = DEFAULT_EXPERIMENT,
           run_name: str = "", package_path: str = "", namespace: str = "",
           profile: str = "default", service_account: str = "", no_cache: bool = False,
           settings: ClusterSettings | None = None, existing_token: str = "",
           cookies: str = "") -> str:
    """Start one run of the pipeline on the cluster at ``host``; returns the run id.
    ``service_account`` runs the pods as that ServiceAccount; without it, the profile's
    (:func:`profile_service_account`: goggles-runner for dev and prod). ``no_cache`` reuses
    no task's earlier outputs; ``settings`` compile the package (without ``package_path``);
    ``existing_token`` and ``cookies`` authenticate (:func:`make_client`)."""
    service_account = service_account or profile_service_account(profile)
    package, temporary = _package(package_path, profile, settings, no_cache)
    try:
        arguments = parse_arguments(assignments, package)
        client = make_client(host, namespace, existing_token=existing_token, cookies=cookies)
        result = client.create_run_from_pipeline_package(
            package, arguments=arguments, run_name=run_name or None, experiment_name=experiment,
            service_account=service_account or None, enable_caching=_caching(no_cache))
    finally:
        for path in temporary:
            os.remove(path)
    logger.info("submitted run %s in experiment %r as %s", result.run_id, experiment,
                service_account or "the namespace's default service account")
    return str(result.run_id)


def schedule(host: str, cron: str, assignments: Sequence[str], *,
             experiment: str = DEFAULT_EXPERIMENT, job_name: str = DEFAULT_JOB_NAME,
             package_path: str = "", namespace: str = "", max_concurrency: int = 1,
             profile: str = "default", service_account: str = "", no_cache: bool = False,
             settings: ClusterSettings | None = None, existing_token: str = "",
             cookies: str = "") -> str:
    """Create a recurring run on ``cron`` (six fields); returns the recurring run's id.
    The other arguments as for :func:`submit`."""
    cron = check_cron(cron)
    service_account = service_account or profile_service_account(profile)
    package, temporary = _package(package_path, profile, settings, no_cache)
    try:
        arguments = parse_arguments(assignments, package)
        client = make_client(host, namespace, existing_token=existing_token, cookies=cookies)
        found = client.create_experiment(name=experiment)
        recurring = client.create_recurring_run(
            experiment_id=found.experiment_id, job_name=job_name, cron_expression=cron,
            params=arguments, pipeline_package_path=package, max_concurrency=max_concurrency,
            no_catchup=True, service_account=service_account or None,
            enable_caching=_caching(no_cache))
    finally:
        for path in temporary:
            os.remove(path)
    logger.info("scheduled %r on %r in experiment %r as %s", job_name, cron, experiment,
                service_account or "the namespace's default service account")
    return str(recurring.recurring_run_id)


def package_version(package_path: str) -> str:
    """The default version name of a package: this goggles' version and the first 12 hex
    digits of the package's SHA-256, so the same package uploads to the same version."""
    import hashlib

    with open(package_path, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()[:12]
    return f"{__version__}-{digest}"


def upload(host: str, *, pipeline_name: str = DEFAULT_PIPELINE, version: str = "",
           package_path: str = "", namespace: str = "", profile: str = "default",
           settings: ClusterSettings | None = None, description: str = "",
           existing_token: str = "", cookies: str = "") -> tuple[str, str, bool]:
    """Store the pipeline on the server as ``pipeline_name`` (created when new) and a version
    named ``version`` (default: :func:`package_version`), for the Kubeflow UI's pipeline list
    and for runs started from it; returns ``(pipeline_id, version_id, created)``. A version of
    that name that exists already is returned as it is (``created`` false): a version is never
    replaced, so runs that name it keep what they ran."""
    _check_settings(package_path, settings)
    package = package_path or compile_package(profile=profile, settings=settings)
    try:
        version = version or package_version(package)
        client = make_client(host, namespace, existing_token=existing_token, cookies=cookies)
        pipeline_id = client.get_pipeline_id(pipeline_name)
        if pipeline_id is None:
            pipeline_id = client.upload_pipeline(
                package, pipeline_name=pipeline_name,
                description=description or "goggles: label images by affinity coding "
                                           "(GOGGLES)").pipeline_id
            logger.info("created pipeline %r (%s)", pipeline_name, pipeline_id)
        else:
            existing = _version_id(client, pipeline_id, version)
            if existing:
                logger.info("pipeline %r already has version %r (%s)", pipeline_name, version,
                            existing)
                return str(pipeline_id), existing, False
        created = client.upload_pipeline_version(
            package, pipeline_version_name=version, pipeline_id=pipeline_id,
            description=description or None)
    finally:
        if not package_path:
            os.remove(package)
    logger.info("uploaded version %r of pipeline %r", version, pipeline_name)
    return str(pipeline_id), str(created.pipeline_version_id), True


def _version_id(client: Any, pipeline_id: str, name: str) -> str:
    """The id of ``pipeline_id``'s version named ``name``, or ``""``."""
    import json

    query = json.dumps({"predicates": [{"operation": 1, "key": "display_name",
                                        "stringValue": name}]})
    found = client.list_pipeline_versions(pipeline_id, page_size=100, filter=query)
    for item in found.pipeline_versions or []:
        if item.display_name == name:
            return str(item.pipeline_version_id)
    return ""
