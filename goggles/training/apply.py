"""Label images a fit never saw with a trained run, without refitting.

Two labelers (:data:`goggles.training.config.LABELERS`):

* ``end-model``: the end classifier of ``OUT/model`` (:mod:`goggles.training.model`) on the new
  images' descriptors; needs only the model folder.
* ``affinity``: the run's own fit (:mod:`goggles.training.labeler`): new rows of A against the
  stored prototypes, then the fitted method's assignment; needs the run's ``artifacts/``.

``auto`` takes the end model when given a model folder itself, else
:data:`goggles.training.config.DEFAULT_LABELER` when it is available, else the other. Both run
the run's networks over the new images once (:mod:`goggles.training.describe`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from goggles.io import artifacts, features_folder, storage
from goggles.training.config import DEFAULT_LABELER, ApplyConfig


@dataclass
class Applied:
    """New images' posteriors [n, K], the class names, the labeler used and its timings."""

    probs: np.ndarray
    classes: list[str]
    labeler: str
    networks: list[str]
    seconds: dict[str, float] = field(default_factory=dict)


def locate(uri: str) -> tuple[str, str]:
    """(model folder, run folder) that ``uri`` gives: a run's output folder gives both (each
    ``""`` when absent), a model folder itself and its run when it lies in one."""
    model = ""
    try:
        model = artifacts.model_folder(uri)
    except FileNotFoundError:
        pass
    for candidate in (uri, uri.rstrip("/").rsplit("/", 1)[0] if "/" in uri else ""):
        if candidate and storage.exists(artifacts.output_paths(candidate)["inference"]):
            return model, candidate
    return model, ""


def choose_labeler(requested: str, model: str, run: str, where: str) -> str:
    """The labeler to use: ``requested``, checked against what ``where`` holds."""
    available = [name for name, there in (("end-model", model), ("affinity", run)) if there]
    if not available:
        raise FileNotFoundError(f"{where} holds neither a model (model.json) nor a finished "
                                "run (artifacts/inference.json): give a run's OUT or OUT/model")
    if requested == "auto":
        if model and model.rstrip("/") == where.rstrip("/"):
            return "end-model"  # pointed at the model folder itself: the user means the model
        return DEFAULT_LABELER if DEFAULT_LABELER in available else available[0]
    if requested not in available:
        need = "model/model.json (train with --train or `goggles train OUT`)" \
            if requested == "end-model" else "the run's artifacts/ (give the run's OUT)"
        raise FileNotFoundError(f"labeler {requested!r} needs {need}; {where} lacks it")
    return requested


def label_new_images(uri: str, uris: Sequence[str], config: ApplyConfig,
                     hashes: Sequence[str] | None = None) -> Applied:
    """Posteriors of the images at ``uris`` from the trained run or model at ``uri``; with
    ``hashes`` (the manifest's sha256 of each), an image whose bytes changed since ingest
    raises :class:`goggles.io.images.ImageChanged`."""
    from goggles.training.describe import describe_images

    started = time.perf_counter()
    model_uri, run_uri = locate(uri)
    labeler = choose_labeler(config.labeler, model_uri, run_uri, uri)
    options: dict[str, Any] = {"device": config.device, "batch_size": config.batch_size,
                               "num_workers": config.num_workers, "hashes": hashes}
    if labeler == "end-model":
        from goggles.training.model import load_model

        model = load_model(model_uri)
        networks = [(n["backbone"], features_folder.reusable_weights(str(n.get("weights", ""))))
                    for n in model.networks]
        described = describe_images(uris, networks, image_size=model.image_size, **options)
        began = time.perf_counter()
        features = np.concatenate(described.descriptors, axis=1)
        probs = model.predict_proba(features)
        classes = model.classes
    else:
        from goggles.training.labeler import AffinityLabeler

        fitted = AffinityLabeler.from_run(run_uri)
        networks = fitted.networks
        described = describe_images(uris, networks, prototypes=fitted.prototypes,
                                    image_size=fitted.image_size, **options)
        began = time.perf_counter()
        assert described.affinity is not None
        probs = fitted.predict_proba(described.affinity, described.descriptors)
        classes = fitted.classes
    seconds = dict(described.seconds)
    seconds["predict"] = round(time.perf_counter() - began, 3)
    seconds["total"] = round(time.perf_counter() - started, 3)
    return Applied(probs=np.asarray(probs, dtype=np.float64).reshape(len(uris), len(classes)),
                   classes=classes, labeler=labeler, networks=[n for n, _ in networks],
                   seconds=seconds)
