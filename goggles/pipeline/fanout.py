"""Graph EM fanned out over the row shards, as a cluster runs it: no task reads all of A.

Graph EM fits on a sample of at most ``max_rows`` images (:func:`goggles.inference.views.
fit_sample`) and labels every other image from its nearest sampled ones, row by row
(:mod:`goggles.inference.extend`). The sample depends on the number of images and the dev rows
alone, so the tasks split as follows:

* **plan** draws the sample (:func:`run_plan_sample`: ``sample.npy``, ``view.npy`` the rows the
  report draws, and ``meta.json`` with N and the dev labels matched to rows);
* each **affinity** shard writes, besides its rows of A, the rows of its shard that are in the
  sample with their descriptors (:func:`goggles.io.artifacts.write_sample_part`) and a copy
  of its rows' descriptors beside its rows of A (for its label task);
* **fit** reads the sample's parts alone (:func:`run_fit`: at 20,000 images and 20,000
  prototypes 1.6 GB of A), fits graph EM on them exactly as the in-process fit does
  (:meth:`goggles.inference.graph_em.GraphEM.fit_sample`) and writes the
  :class:`~goggles.inference.extend.SampleFit`, the report's Gaussians and the run's state;
* one **label** task per shard reads its rows of A, their descriptors and the fit
  (:func:`run_label_shard`);
* **gather** joins the shards' labels into ``labels.parquet`` and ``inference.json``
  (:func:`run_gather_labels`);
* **evaluate** draws the report's affinity matrix from the view's rows, which each affinity
  shard also writes apart.

The labels are the in-process run's, byte for byte, for any number of shards (the local-runner
tests check 1 and 3 shards).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from goggles.config import StageError
from goggles.inference.config import InferConfig
from goggles.io import artifacts, storage
from goggles.io.dev_labels import read_dev_labels

SAMPLE = "sample.npy"
VIEW = "view.npy"
META = "meta.json"
REPORT_ROWS = 2000
"""Rows of A the report's affinity matrix is drawn from (it pools them to at most 256 rows):
a seeded subset of the sample, every image up to this many."""
FIT = "fit"
STATE = "state.json"


def _dev(dev_labels_uri: str, rows: Any) -> dict[str, Any] | None:
    if not dev_labels_uri:
        return None
    dev_rows, dev_names = read_dev_labels(dev_labels_uri, rows)
    return {"rows": [int(r) for r in dev_rows], "labels": list(dev_names)}


def _seeds(dev: dict[str, Any] | None, num_classes: int) -> Any:
    from goggles.inference.seeds import Seeds

    return None if dev is None else Seeds.from_names(dev["rows"], dev["labels"], num_classes)


def run_plan_sample(config: InferConfig, manifest_uri: str, dev_labels_uri: str,
                    sample_uri: str, *, max_rows: int | None = None) -> dict[str, Any]:
    """Draw graph EM's sample of the accepted images (at most ``max_rows``, default graph EM's,
    and its dev-labeled images; every image for the other methods, which fit on all of A) and
    write it under folder ``sample_uri``; returns ``{"n_images", "n_sample"}``."""
    from goggles.inference.graph_em import GraphEM
    from goggles.inference.views import fit_sample

    rows = artifacts.accepted(storage.read_parquet(manifest_uri))
    dev = _dev(dev_labels_uri, rows)
    seeds = _seeds(dev, config.num_classes)
    if config.method == GraphEM.name:
        sample = fit_sample(rows.num_rows, GraphEM.max_rows if max_rows is None else max_rows,
                            config.seed, None if seeds is None else seeds.rows)
    else:  # the other methods fit on every row of A, in one task
        sample = np.arange(rows.num_rows)
    storage.write_npy(sample.astype(np.int64), storage.join(sample_uri, SAMPLE))
    view = sample if len(sample) <= REPORT_ROWS else np.sort(
        np.random.default_rng(config.seed).choice(sample, REPORT_ROWS, replace=False))
    storage.write_npy(view.astype(np.int64), storage.join(sample_uri, VIEW))
    storage.write_json({"n_images": rows.num_rows, "dev": dev}, storage.join(sample_uri, META))
    return {"n_images": rows.num_rows, "n_sample": len(sample)}


def run_fit(config: InferConfig, sample_uri: str, part_uris: Sequence[str],
            prototypes_uri: str, fit_uri: str) -> dict[str, Any]:
    """Fit ``config.method`` on the sample's parts (:class:`goggles.io.artifacts.SampleParts`:
    graph EM's sample, or every image for the other methods) and write under folder ``fit_uri``
    what the label tasks and the gather need: the
    :class:`~goggles.inference.extend.SampleFit`, the report's Gaussians and the state
    (``state.json``: the fit's record, the cluster names, the dev set and the images to label
    next). The labels are those of the in-process infer stage
    (:func:`goggles.pipeline.stages.run_infer`)."""
    from goggles.inference.base import label_confidence
    from goggles.inference.extend import SampleFit
    from goggles.inference.graph_em import GraphEM
    from goggles.inference.registry import create
    from goggles.inference.summary import inference_state
    from goggles.report.evaluation import name_clusters

    model = create(config)
    plan = storage.read_json(storage.join(sample_uri, META))
    sample = storage.read_npy(storage.join(sample_uri, SAMPLE))
    parts = artifacts.SampleParts(part_uris)
    if not np.array_equal(parts.index, sample):
        raise StageError("the affinity shards' sample parts hold other rows than the plan's "
                         "sample; rerun the affinity shards of this plan")
    n = int(plan["n_images"])
    source_index = artifacts.read_source_index(prototypes_uri)
    if parts.shape[1] != len(source_index):
        raise StageError(f"the sample's rows of A have {parts.shape[1]} columns but there are "
                         f"{len(source_index)} prototypes; rerun the affinity stage")
    if config.num_classes > n:
        raise StageError(f"num_classes={config.num_classes} exceeds the {n} accepted images; "
                         f"use at most {n} classes or add images")
    dev = plan["dev"]
    seeds = _seeds(dev, config.num_classes)
    if dev is not None:
        dev["seeded"] = seeds is not None
    descriptors: list[np.ndarray] = []
    if isinstance(model, GraphEM):
        descriptors = parts.descriptors
        fit = model.fit_sample(parts, descriptors, sample, source_index, seeds)
    else:
        if len(sample) != n:
            raise StageError(f"method {config.method!r} fits on every image, but the plan "
                             f"sampled {len(sample)} of {n}; rerun the plan with this method")
        inputs = {name: parts.arrays(name) for name in model.reads}
        model.fit(parts, source_index, seeds=seeds, **inputs)
        assert model.posteriors_ is not None
        initial = model.initial_labels_
        fit = SampleFit(sample, [], model.posteriors_,
                        model.posteriors_.argmax(axis=1) if initial is None else initial,
                        label_confidence(model), 0)
    fit.save(storage.join(fit_uri, FIT))
    posteriors = fit.posteriors
    del fit  # its parts (1.6 GB at 20,000 x 20,000) are on disk: not held through what follows
    names = list(model.cluster_names_ or [f"cluster_{k}" for k in range(config.num_classes)])
    if dev is not None:
        if model.dev_choice_:
            dev["choice"] = model.dev_choice_
        local = np.searchsorted(sample, dev["rows"])
        names = name_clusters(dev["labels"], posteriors.argmax(axis=1)[local],
                              config.num_classes)
    has_initial = isinstance(model, GraphEM) or model.initial_labels_ is not None
    model.initial_labels_ = None  # every image's: the gather's
    state = inference_state(model, config.method, names, dev)
    state["suggestions"] = sample_suggestions(parts, descriptors, sample, config,
                                              dev["rows"] if dev is not None else ())
    if model.params_ is not None:
        for name in ("mean", "std", "prior"):
            storage.write_npy(np.asarray(getattr(model.params_, name)),
                              storage.join(fit_uri, f"gaussian-{name}.npy"))
    storage.write_json({**state, "n_images": n, "has_initial": has_initial,
                        "has_gaussians": model.params_ is not None},
                       storage.join(fit_uri, STATE))
    return {"n_sample": len(sample), "em_iterations": state["em_iterations"],
            "converged": state["converged"], "num_prototypes": len(source_index)}


def sample_suggestions(rows: Any, descriptors: Sequence[np.ndarray], sample: np.ndarray,
                       config: InferConfig, labeled: Sequence[int]) -> dict[str, Any]:
    """inference.json's ``suggestions`` from graph EM's sample (rows [S, M] of A and the
    descriptors of the images ``sample``): ``PER_CLASS`` per class, none of the ``labeled``
    rows (among all N)."""
    from goggles.inference.suggest import PER_CLASS, suggest_images

    budget = PER_CLASS * config.num_classes
    picks = suggest_images(rows, list(descriptors), budget,
                           labeled=np.searchsorted(sample, np.asarray(labeled, dtype=np.int64)),
                           seed=config.seed)
    return {"rows": sample[picks].tolist(), "budget": budget, "how": "typical"}


def keep_shard_descriptors(affinity_uri: str, described: Sequence[np.ndarray]) -> None:
    """Store an affinity shard's rows' descriptors beside its rows of A (its label task reads
    both, :func:`shard_descriptors`)."""
    for i, values in enumerate(described):
        storage.write_npy(values, storage.join(affinity_uri, f"descriptors-{i}.npy"))
    meta = storage.read_json(storage.join(affinity_uri, META))
    storage.write_json({**meta, "descriptors": len(described)}, storage.join(affinity_uri, META))


def shard_descriptors(affinity_uri: str) -> list[np.ndarray]:
    """The descriptors an affinity shard keeps of its rows (one [n, D] per network)."""
    meta = storage.read_json(storage.join(affinity_uri, META))
    return [storage.read_npy(storage.join(affinity_uri, f"descriptors-{i}.npy"))
            for i in range(int(meta.get("descriptors", 0)))]


def run_label_shard(fit_uri: str, affinity_uri: str, labels_uri: str, *,
                    num_shards: int | None = None) -> dict[str, Any]:
    """Labels of one affinity shard's images from the fit (:func:`run_fit`) and the shard's rows
    of A and descriptors (:func:`goggles.inference.extend.label_block`), as folder
    ``labels_uri``; ``num_shards``, the run's, is checked against the shard's."""
    from goggles.inference.extend import SampleFit, label_block

    fit = SampleFit.load(storage.join(fit_uri, FIT))
    meta = storage.read_json(storage.join(affinity_uri, META))
    block = storage.read_npy(storage.join(affinity_uri, "affinity.npy"))
    start = int(meta["start"])
    if num_shards is not None and int(meta["num_shards"]) != num_shards:
        raise StageError(f"the affinity shard is one of {meta['num_shards']} but the run has "
                         f"num_shards={num_shards}; rerun the affinity stage")
    if fit.parts and block.shape[1] != fit.parts[0].shape[1]:
        raise StageError(f"the shard's rows of A have {block.shape[1]} columns but the fit's "
                         f"{fit.parts[0].shape[1]}; rerun the shards of one run")
    posteriors, initial, confidence = label_block(
        fit, start, block, shard_descriptors(affinity_uri) if fit.parts else [])
    for name, values in (("posteriors", posteriors), ("initial", initial),
                         ("confidence", confidence)):
        storage.write_npy(values, storage.join(labels_uri, f"{name}.npy"))
    storage.write_json({"start": start, "stop": start + len(block)},
                       storage.join(labels_uri, META))
    return {"start": start, "stop": start + len(block)}


def run_gather_labels(manifest_uri: str, fit_uri: str, part_uris: Sequence[str],
                      prototypes_uri: str, labels_uri: str, inference_uri: str
                      ) -> dict[str, Any]:
    """Join the label tasks' parts (:func:`run_label_shard`) into ``labels.parquet`` and
    ``inference.json``, as the in-process infer stage writes them."""
    from goggles.inference.likelihood import GaussianParameters
    from goggles.inference.summary import informative_prototypes

    rows = artifacts.accepted(storage.read_parquet(manifest_uri))
    state = storage.read_json(storage.join(fit_uri, STATE))
    parts = artifacts.in_row_order(((storage.read_json(storage.join(uri, META)), uri)
                                    for uri in part_uris), "label parts", "image")
    expected = int(parts[-1][0]["stop"]) if parts else 0
    if expected != rows.num_rows:
        raise StageError(f"the label parts cover {expected} images but the manifest accepts "
                         f"{rows.num_rows}; rerun infer on this run's shards")
    fitted = int(state.pop("n_images"))
    if fitted != rows.num_rows:
        raise StageError(f"the fit is of a run of {fitted} images but the manifest accepts "
                         f"{rows.num_rows}; rerun infer on this run's shards")
    posteriors, initial, confidence = (
        np.concatenate([storage.read_npy(storage.join(uri, f"{name}.npy")) for _, uri in parts])
        for name in ("posteriors", "initial", "confidence"))
    storage.write_parquet(artifacts.labels_table(rows, posteriors, state["cluster_names"],
                                                 confidence), labels_uri)
    source_index = artifacts.read_source_index(prototypes_uri)
    params = GaussianParameters(*(storage.read_npy(storage.join(fit_uri, f"gaussian-{name}.npy"))
                                  for name in ("mean", "std", "prior"))) \
        if state.pop("has_gaussians") else None
    state["initial_labels"] = initial.tolist() if state.pop("has_initial") else None
    state["prototypes"] = informative_prototypes(params, posteriors.argmax(axis=1)[source_index])
    storage.write_json(state, inference_uri)
    return {"num_prototypes": len(source_index), "em_iterations": state["em_iterations"],
            "converged": state["converged"]}
