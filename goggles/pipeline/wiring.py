"""What every runner does around the stages, written once.

The in-process runner (:mod:`goggles.pipeline.inprocess`) and the Kubeflow components
(:mod:`goggles.kubeflow.components`) both call these:

* :func:`check_run` — before any work: every parameter (:func:`check_parameters`), then what
  the run reads (:func:`check_inputs`);
* :func:`check_counts` — after ingest, before the expensive extraction: the run fits the images
  that were accepted (the pipeline's plan task);
* :func:`stage_config` — a stage's config from the run's parameters (:mod:`goggles.parameters`);
* :func:`run_record` — the parameters ``metrics.json`` records beside the metrics;
* :func:`evaluate_and_report` — ``metrics.json`` (with the end model's scores when the run
  trained one) and ``report.html``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from goggles.config import BACKBONES, IMAGE_EXTENSIONS, Config, ConfigError, StageError, check
from goggles.io import listing, storage, uris
from goggles.io.dev_labels import (
    check_against_manifest,
    check_dev_labels,
    match_dev_labels,
    read_dev_labels_table,
)
from goggles.parameters import STAGES, RunParameters, check_parameter, names, spec
from goggles.pipeline.costs import recommended_shards

logger = logging.getLogger(__name__)


def _config_class(stage: str) -> type[Config]:
    # imported here so that a task imports only its own stage's package
    if stage == "ingest":
        from goggles.ingest.config import IngestConfig
        return IngestConfig
    if stage in ("extract", "affinity"):
        from goggles.features.config import AffinityConfig, ExtractConfig
        return ExtractConfig if stage == "extract" else AffinityConfig
    if stage == "infer":
        from goggles.inference.config import InferConfig
        return InferConfig
    if stage == "train":
        from goggles.training.config import TrainConfig
        return TrainConfig
    raise ValueError(f"unknown stage {stage!r}; choose ingest, extract, affinity, infer or "
                     "train")


def stage_config(stage: str, values: Mapping[str, Any]) -> Any:
    """The config of ``stage`` (``ingest``, ``extract``, ``affinity``, ``infer``, ``train``)
    from run parameter values: those that set this stage (``goggles.parameters.Spec.stages``)
    and are given; the others keep their defaults."""
    return _config_class(stage)(**{name: values[name] for name in names(stage=stage)
                                   if name in values})


def stage_configs(params: RunParameters) -> dict[str, Any]:
    """Every stage's config for a run (each validates itself)."""
    values = {name: getattr(params, name) for name in names()}
    return {stage: stage_config(stage, values) for stage in STAGES}


def absolute_uris(params: RunParameters) -> RunParameters:
    """``params`` with every local URI absolute (:func:`goggles.io.uris.absolute`), so the
    manifest, labels and ``metrics.json`` of a run on this machine name the same files from any
    working directory (``goggles export`` run elsewhere, its DEST-inside-SOURCE check)."""
    import dataclasses

    changes: dict[str, Any] = {name: uris.absolute(getattr(params, name))
                               for name in names() if spec(name).uri}
    return dataclasses.replace(params, **changes)


def check_run(params: RunParameters, *, local_output: bool = True,
              source: listing.SourceListing | None = None) -> dict[str, Any]:
    """Check a run before any work starts (:func:`check_parameters`, then
    :func:`check_inputs`, which lists the source through ``source``, the run's listing, when it
    must); returns its stage configs."""
    configs = check_parameters(params, local_output=local_output)
    check_inputs(params, source)
    return configs


def check_parameters(params: RunParameters, *, local_output: bool = True) -> dict[str, Any]:
    """Check the parameters of a run, reading nothing; returns its stage configs.

    Raises :class:`ConfigError` naming the problem and the fix for: a missing source or output,
    a URI goggles must not open (a protocol off the allow-list, ``::`` chaining, credentials or a
    signed query string: :func:`goggles.io.uris.refusal`), a parameter out of range, an output
    inside the source (the next run would ingest its own outputs). ``local_output=False`` skips
    the output checks (a cluster run's outputs go to its pipeline root).
    """
    check(bool(params.source_uri), "no source: give the folder or bucket prefix of the images",
          "source_uri")
    for name in names():
        value = getattr(params, name)
        if spec(name).uri and value and (local_output or name != "output_uri"):
            reason = uris.refusal(value)
            check(reason is None, f"{name} {uris.redact(value)!r}: {reason}", name)
    configs = stage_configs(params)
    if local_output:
        check(bool(params.output_uri), "no output: give where the labels should go "
                                       "(--output OUT)", "output_uri")
        if uris.is_inside(params.output_uri, params.source_uri):
            raise ConfigError(f"output {params.output_uri!r} is inside the source "
                              f"{params.source_uri!r}; the next run would ingest its own "
                              "outputs. Choose an output outside the source folder",
                              "output_uri")
    return configs


def check_inputs(params: RunParameters, source: listing.SourceListing | None = None) -> None:
    """Check what a run reads before it starts: a local source that does not exist, is not a
    folder or holds no image file; a local dev-labels or weights file that does not exist; dev
    labels too large, unparsable, without ``uri,label`` or matching no image of a local source;
    ``method='backbone'`` with weights that lack the ImageNet classifier. Each raises
    :class:`ConfigError` (or the weights' own error) naming the fix. ``source``: the run's
    listing (:class:`goggles.io.listing.SourceListing`), so that ingest reuses what the checks
    listed."""
    if storage.is_local(params.source_uri):
        path = storage.local_path(params.source_uri)
        where = uris.redact(params.source_uri)
        check(os.path.exists(path), f"source {where} does not exist; give a folder of images "
                                    "(or a gs:// or s3:// prefix)", "source_uri")
        check(os.path.isdir(path), f"source {where} is a file, not a folder; give the folder "
                                   "that holds the images", "source_uri")
        if not listing.has_files(path, IMAGE_EXTENSIONS, params.follow_symlinks):
            linked = listing.has_files(path, IMAGE_EXTENSIONS, True)
            raise ConfigError(
                f"source {where} holds no image files (looked for "
                f"{', '.join(IMAGE_EXTENSIONS)}); give the folder that holds the images" + (
                    ", or pass --follow-symlinks: its images are symlinks that lead outside it"
                    if linked else ""), "source_uri")
    for name in ("dev_labels_uri", "weights_uri"):
        value = getattr(params, name)
        if value and storage.is_local(value):
            what = name.removesuffix("_uri").replace("_", " ")
            check(storage.exists(value),
                  f"{what} {uris.redact(value)} does not exist; check the path", name)
    _check_backbones(params)
    if params.dev_labels_uri:
        _check_dev_labels(params.dev_labels_uri,
                          source or listing.SourceListing(params.source_uri),
                          params.follow_symlinks, params.num_classes)
    if params.method == "backbone":  # fail now, not after extraction, without a classifier
        from goggles.inference.imagenet import classifier_weights

        check(params.backbone in BACKBONES,
              f"method 'backbone' reads the ImageNet classifier of vgg16 or mobilenet_v2, not "
              f"of {params.backbone!r}; choose another --method or one of those backbones",
              "method")

        classifier_weights(params.backbone, params.weights_uri)


def _check_backbones(params: RunParameters) -> None:
    """The networks' libraries are installed, and the weights file is there with the pinned
    digest: refused now, in one line, rather than in the extract task."""
    from goggles.features.backbones import check_available
    from goggles.features.network import read_weights_bytes

    check_available(params.backbone)
    check_available(params.descriptor_backbone)
    check(not params.weights_sha256 or bool(params.weights_uri),
          "--weights-sha256 pins the file given to --weights; pass --weights URI too",
          "weights_sha256")
    if params.weights_uri:
        read_weights_bytes(params.weights_uri, params.weights_sha256)


def _check_dev_labels(dev_labels_uri: str, source: listing.SourceListing,
                      follow_symlinks: bool, num_classes: int) -> None:
    """Read the dev labels now, not after extraction: size, rows, format and columns; names
    (:func:`goggles.io.dev_labels.check_dev_labels`); against a local source, how many of them
    name one of its images (none is an error)."""
    try:
        table = read_dev_labels_table(dev_labels_uri)
        check_dev_labels(table, num_classes, f"dev labels {uris.redact(dev_labels_uri)}")
        if storage.is_local(source.root_uri):
            files = source.files(IMAGE_EXTENSIONS, follow_symlinks=follow_symlinks)
            match_dev_labels(table, [f.uri for f in files],
                             f"dev labels {uris.redact(dev_labels_uri)}")
    except (ValueError, storage.StorageError) as error:
        raise ConfigError(str(error), "dev_labels_uri") from None


def shard_count(num_shards: int, n_images: int) -> int:
    """The row shards of a run of ``n_images`` accepted images: ``num_shards``, or for 0 one per
    :data:`goggles.pipeline.costs.IMAGES_PER_SHARD` images (what ``goggles plan`` recommends:
    each pod's reads stay under 2 GB)."""
    return num_shards or recommended_shards(n_images)


def check_counts(n_images: int, num_classes: int, num_shards: int, manifest_uri: str = "") -> None:
    """Check a run against the number of accepted images (after ingest, before extraction)."""
    where = f" (rejection reasons: {manifest_uri})" if manifest_uri else ""
    check_parameter("num_classes", num_classes)  # the plan task gets them from a cluster's form
    check_parameter("num_shards", num_shards)
    if n_images < 1:
        raise StageError("no image was accepted: every file was rejected or none was found; "
                         f"see the manifest's error column and check the source{where}")
    if n_images < num_classes:
        raise StageError(f"only {n_images} images were accepted, fewer than "
                         f"num_classes={num_classes}; lower num_classes or add images{where}")
    if num_shards > n_images:
        raise StageError(f"num_shards={num_shards} exceeds the {n_images} accepted images; use "
                         f"at most {n_images} shards")


def check_dev_labels_ingested(dev_labels_uri: str, manifest_uri: str, num_classes: int) -> None:
    """After ingest, before extraction (the pipeline's plan task; on a cluster the first check of
    the dev labels): their rows and names (:func:`check_dev_labels`), and that they name an
    accepted image, rows that name only rejected images counted and named
    (:func:`check_against_manifest`)."""
    if not dev_labels_uri:
        return
    where = f"dev labels {uris.redact(dev_labels_uri)}"
    manifest = storage.read_parquet(manifest_uri, columns=["uri", "status", "error"])
    try:
        table = read_dev_labels_table(dev_labels_uri)
        check_dev_labels(table, num_classes, where)
        check_against_manifest(table, manifest, where)
    except ValueError as error:
        raise StageError(f"{error} (rejection reasons: {manifest_uri})") from None


FEATURE_COUNTS = ("features_computed", "features_reused")
"""What the extract stage reports about the feature cache (all computed without one)."""


def run_record(values: Mapping[str, Any], *, runner: str, weights_source: str,
               num_prototypes: int, extracted: Mapping[str, Any] | None = None,
               ) -> dict[str, Any]:
    """The parameters and provenance ``metrics.json`` records beside the metrics; with the
    extract stage's result (``extracted``), how many images' features it computed and how many
    it read from the feature cache."""
    record = {"num_prototypes": num_prototypes, "backbone": values["backbone"],
              "weights_source": uris.redact(weights_source), "runner": runner,
              "seed": values["seed"], "top_k": values["top_k"],
              "num_shards": values["num_shards"], "source_uri": uris.redact(values["source_uri"])}
    for key in FEATURE_COUNTS:
        if extracted is not None and key in extracted:
            record[key] = int(extracted[key])
    if extracted is not None and "preprocessing" in extracted:  # each network's own
        record["preprocessing"] = dict(extracted["preprocessing"])
    if extracted is not None and "prototype_budget" in extracted:  # the cap used and why
        budget = extracted["prototype_budget"]  # KFP's metadata gives its numbers as floats
        record["prototype_budget"] = {
            "requested": int(budget["requested"]), "cap": int(budget["cap"]),
            "rule": str(budget["rule"]), "binds": bool(budget["binds"]),
            "prototypes_found": int(extracted.get("prototypes_found", 0))}
    return record


def evaluate_and_report(*, manifest_uri: str, labels_uri: str, inference_uri: str,
                        prototypes_uri: str, affinity_uris: Sequence[str], metrics_uri: str,
                        report_uri: str, record: dict[str, Any], timings: dict[str, float],
                        end_model: dict[str, Any] | None = None,
                        affinity_sample: bool = False) -> dict[str, Any]:
    """Write ``metrics.json`` (with ``record``, the stages' ``timings`` and, when the run
    trained one, the end model's held-out scores ``end_model``) and ``report.html``; returns
    the metrics. Every runner trains before it evaluates, so ``metrics.json`` is written once.
    ``affinity_sample``: ``affinity_uris`` are graph EM's sample parts
    (:class:`goggles.io.artifacts.SampleParts`), not every shard of A."""
    from goggles.pipeline.stages import run_evaluate
    from goggles.report.page import write_report

    metrics = run_evaluate(manifest_uri, labels_uri, inference_uri, metrics_uri, extra=record,
                           timings=timings, end_model=end_model)
    write_report(report_uri, metrics, labels_uri=labels_uri, inference_uri=inference_uri,
                 prototypes_uri=prototypes_uri, affinity_uris=list(affinity_uris),
                 manifest_uri=manifest_uri, affinity_sample=affinity_sample)
    return metrics
