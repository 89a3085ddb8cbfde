"""The fitted affinity labeler: label new images with a finished run's fit, without refitting.

A new image's row of A is its affinity to the run's stored prototypes (paper §3.2: the same
prototypes, so the same columns); the fitted method then assigns it:

* graph EM: the mean posterior of its ``neighbours`` nearest images of the run's graph, by the
  sum of the cosines of its row of A and its descriptors — what graph EM does for the images
  beyond its sample (:func:`goggles.inference.graph_em.nearest_references`); when the run's dev
  labels gave its labels from a classifier of the dev images instead
  (:mod:`goggles.inference.dev_choice`), that classifier, as the run applied it to its own
  images;
* every other method: a final E-step of the paper's model (:meth:`goggles.inference.paper_em.
  AffinityEM.predict_proba`) under per-prototype Gaussians fitted on the run's final labels
  (:func:`goggles.inference.summary.fit_gaussians`, one pass over the stored A) — the
  paper's EM's own last M-step, up to its sampled labels.

Everything it reads is in the run's ``artifacts/`` (:func:`goggles.io.artifacts.output_paths`):
prototypes, affinity shards, the features' descriptors, and ``labels.parquet``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from goggles.inference.seeds import Seeds
from goggles.io import artifacts, features_folder, storage
from goggles.io.blocks import RowBlocks, as_rows


def run_networks(features_meta: dict[str, Any]) -> list[tuple[str, str]]:
    """(backbone, weights URI) of the networks a run's features came from: its backbone first
    (weights reused when they were a file or URI, ``""``: resolved again), then the other
    networks whose descriptors it stored."""
    backbone = str(features_meta["backbone"])
    reused = features_folder.reusable_weights(str(features_meta.get("weights", "")))
    return [(backbone, reused)] + [
        (name, reused if name.startswith(backbone + "@") else "")
        for name in features_meta.get("descriptors", []) if name != backbone]


def shard_uris(affinity_uri: str) -> list[str]:
    """The affinity shard folders of a run (``shard-NNNNN``), in order."""
    return [storage.join(affinity_uri, name) for name in storage.list_dir(affinity_uri)
            if name.startswith("shard-")]


@dataclass
class AffinityLabeler:
    """A finished run's fit, ready to label new images (:meth:`predict_proba`)."""

    method: str
    classes: list[str]
    prototypes: np.ndarray
    """[M, C] the run's prototype vectors: new rows of A are affinities to them."""
    networks: list[tuple[str, str]]
    """(backbone, weights) of the networks to run on new images, the run's backbone first."""
    image_size: int
    posteriors: np.ndarray
    source_index: np.ndarray
    neighbours: int = 10
    parts: list[np.ndarray] | None = None
    """graph EM: the reference images' unit rows of A and descriptors."""
    reference: np.ndarray | None = None
    """graph EM: the rows of the run the parts describe."""
    gaussians: Any = None
    """other methods: the fitted :class:`goggles.inference.paper_em.AffinityEM`."""
    classifier: Any = None
    """graph EM whose dev labels chose a classifier of the dev images: that
    :class:`goggles.inference.dev_choice.SeedClassifier`."""
    described: int = 0
    """graph EM: how many stored descriptors (networks) it reads beside A (its reference parts
    and its classifier alike); 0 for a features
    folder from before descriptors were kept, whose run computed them from the maps: the
    classifier then sees rows of A only."""

    @classmethod
    def from_run(cls, run_uri: str) -> AffinityLabeler:
        """Read a finished run's fit from its output folder ``run_uri``."""
        paths = artifacts.output_paths(run_uri)
        for what in ("labels", "inference", "prototypes"):
            if not storage.exists(paths[what]):
                raise FileNotFoundError(
                    f"{paths[what]} is missing: the affinity labeler needs a finished run's "
                    "output folder (OUT, with artifacts/), not only its model")
        state = storage.read_json(paths["inference"])
        labels = storage.read_parquet(paths["labels"]).sort_by("image_id")
        meta = features_folder.read_features_meta(paths["features"])
        prototypes = artifacts.read_prototypes(paths["prototypes"])
        descriptors = features_folder.stored_descriptors(paths["features"], meta=meta) or []
        dev = state.get("dev") or {}
        seeds = (Seeds.from_names(dev["rows"], dev["labels"], len(state["cluster_names"]))
                 if dev.get("seeded") else None)
        return cls.from_fit(
            method=str(state["method"]), classes=list(state["cluster_names"]),
            prototypes=prototypes.vectors, source_index=prototypes.image_id,
            affinity=artifacts.StoredShards(shard_uris(paths["affinity"])),
            posteriors=np.asarray(labels["probs"].to_pylist(), dtype=np.float64),
            descriptors=descriptors, networks=run_networks(meta),
            image_size=int(meta.get("image_size", 224)), seed=artifacts.run_seed(run_uri),
            seeds=seeds, dev_choice=dev.get("choice"))

    @classmethod
    def from_fit(cls, *, method: str, classes: list[str], prototypes: np.ndarray,
                 source_index: np.ndarray, affinity: np.ndarray | RowBlocks,
                 posteriors: np.ndarray, descriptors: Sequence[np.ndarray],
                 networks: Sequence[tuple[str, str]], image_size: int = 224,
                 seed: int = 0, seeds: Seeds | None = None,
                 dev_choice: dict[str, Any] | None = None) -> AffinityLabeler:
        """The labeler of a fit: its ``method``, prototypes [M, C] with their source rows [M],
        A [N, M], posteriors [N, K], the descriptors graph EM read (one [N, D] per network of
        ``networks``, in order: the run's backbone first), the run's ``seed``, the ``seeds`` its
        dev labels gave (graph EM keeps them in its graph's sample) and what graph EM chose to
        label with (``dev_choice``, inference.json's ``dev.choice``): with a classifier of the
        dev images, new images get that classifier's posteriors, as the run's images did."""
        from goggles.inference.dev_choice import chosen_classifier
        from goggles.inference.graph_em import GraphEM, graph_sample, reference_parts
        from goggles.inference.paper_em import AffinityEM
        from goggles.inference.summary import fit_gaussians

        rows = as_rows(affinity)
        if rows.shape != (len(posteriors), len(prototypes)):
            raise ValueError(f"the run's affinity is {rows.shape} but it has "
                             f"{len(posteriors)} labels and {len(prototypes)} prototypes")
        labeler = cls(method=method, classes=list(classes),
                      prototypes=np.array(prototypes, dtype=np.float32),
                      networks=list(networks)[:1], image_size=image_size,
                      posteriors=np.asarray(posteriors, dtype=np.float64),
                      source_index=np.asarray(source_index, dtype=np.int64))
        if method == GraphEM.name:
            labeler.networks = list(networks)[:max(1, len(descriptors))]
            labeler.described = len(descriptors)
            if seeds is not None:
                labeler.classifier = chosen_classifier(rows, descriptors, seeds,
                                                       labeler.posteriors.shape[1], dev_choice)
            if labeler.classifier is not None:
                return labeler
            labeler.reference = np.union1d(  # the sample graph EM drew, seeds always in it
                graph_sample(len(posteriors), GraphEM.max_rows, np.random.default_rng(seed)),
                np.zeros(0, np.int64) if seeds is None else seeds.rows)
            labeler.parts = reference_parts(rows, descriptors, labeler.reference)
            labeler.neighbours = GraphEM.neighbours
        else:
            model = AffinityEM(num_classes=labeler.posteriors.shape[1])
            model.params_, model.prototype_class_ = fit_gaussians(
                rows, labeler.posteriors.argmax(axis=1), labeler.source_index,
                labeler.posteriors.shape[1], variance_floor=model.variance_floor)
            labeler.gaussians = model
        return labeler

    def predict_proba(self, rows: np.ndarray, descriptors: list[np.ndarray]) -> np.ndarray:
        """[n, K] posteriors of new images from their rows of A [n, M] (against
        :attr:`prototypes`) and descriptors (one [n, D] per network of :attr:`networks`)."""
        from goggles.inference.dev_choice import graph_features
        from goggles.inference.graph_em import nearest_references

        if rows.shape[1] != len(self.prototypes):
            raise ValueError(f"rows of A have {rows.shape[1]} columns; the run has "
                             f"{len(self.prototypes)} prototypes")
        if self.classifier is not None:
            features = graph_features(as_rows(rows), descriptors[:self.described],
                                      np.arange(rows.shape[0]))
            return self.classifier.predict_proba(features)  # type: ignore[no-any-return]
        if self.parts is not None:
            assert self.reference is not None
            near = nearest_references(rows, descriptors[:self.described], self.parts,
                                      self.neighbours)
            return self.posteriors[self.reference][near].mean(axis=1)  # type: ignore[no-any-return]
        return self.gaussians.predict_proba(rows, self.source_index)  # type: ignore[no-any-return]
