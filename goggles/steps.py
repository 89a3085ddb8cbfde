"""One function per pipeline stage. The CLI's in-process runner, the KFP components and the tests
all call these, so the algorithm lives in one place.

Artifacts (see DESIGN.md):

* manifest — Parquet, :data:`goggles.ingest.MANIFEST_SCHEMA`.
* features — a folder: ``shard-NNNNN.npy`` ([n, C, H, W] float32 filter maps) and
  ``index.parquet`` (``image_id``, ``shard``, ``row``) plus ``meta.json`` (shape, backbone).
* prototypes — Parquet with ``prototype_id, image_id, h, w, channel, vector``.
* affinity shard — a folder: ``affinity.npy`` (rows ``[start, stop)`` x M float32) and
  ``meta.json`` (``start``, ``stop``, ``shard_id``, ``num_shards``, ``num_prototypes``).
* labels — Parquet: ``image_id, uri, probs, label, label_name, confidence``.
* inference — JSON: EM trace, k-means labels, warnings (for evaluation and the report).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from goggles import __version__, storage
from goggles.blocks import RowBlocks, StoredShards
from goggles.config import AffinityConfig, ExtractConfig, InferConfig, IngestConfig
from goggles.evaluation import calibration, dev_set_metrics, evaluate, name_clusters
from goggles.ingest import accepted, build_manifest

if TYPE_CHECKING:
    from goggles.baselines import FilterMaps

# torch, torchvision and scikit-learn are imported by the stages that use them, so a pipeline
# task that needs none of them (ingest, evaluate) starts without paying for their imports.

logger = logging.getLogger(__name__)


class StageError(RuntimeError):
    """A stage cannot run with the inputs it was given; the message says what to change."""


# -- ingest ----------------------------------------------------------------------------------------

def run_ingest(config: IngestConfig, source_uri: str, manifest_uri: str) -> dict[str, Any]:
    """List, decode and validate the images under ``source_uri``; write the manifest."""
    manifest = build_manifest(source_uri, config)
    storage.write_parquet(manifest, manifest_uri)
    n_images = int(pc.sum(pc.equal(manifest["status"], "accepted")).as_py() or 0)
    return {"n_listed": manifest.num_rows, "n_images": n_images,
            "n_rejected": manifest.num_rows - n_images}


# -- extract ---------------------------------------------------------------------------------------

def run_extract(config: ExtractConfig, manifest_uri: str, features_uri: str,
                prototypes_uri: str) -> dict[str, Any]:
    """Filter maps of every accepted image (sharded) and their prototypes (paper §3.1), and
    the images' bilinear descriptors for graph EM: of these maps and, when
    ``config.descriptor_backbone`` names another network, of its maps (one more pass)."""
    from goggles.backbones import load_backbone
    from goggles.features import (
        Prototypes,
        extract_filter_maps,
        resolve_device,
        select_prototypes,
    )
    from goggles.graph import bilinear_descriptors

    rows = accepted(storage.read_parquet(manifest_uri))
    if rows.num_rows == 0:
        raise StageError("the manifest has no accepted images; every file was rejected — see "
                         "the manifest's error column")
    uris = rows["uri"].to_pylist()
    image_ids = rows["image_id"].to_numpy()
    model, weights_source = load_backbone(config.backbone, config.weights_uri)
    device = resolve_device(config.device)
    pending: list[np.ndarray] = []
    prototype_parts: list[Prototypes] = []
    index_rows: list[tuple[int, int, int]] = []
    shape: list[int] = []
    descriptors: list[np.ndarray] = []
    shard = 0

    def flush() -> None:
        nonlocal shard
        if not pending:
            return
        block = np.concatenate(pending)
        storage.write_npy(block, storage.join(features_uri, f"shard-{shard:05d}.npy"))
        pending.clear()
        shard += 1

    def on_batch(start: int, maps: np.ndarray) -> None:
        ids = image_ids[start:start + len(maps)]
        prototype_parts.append(select_prototypes(maps, ids, config.top_k))
        shape[:] = list(maps.shape[1:])
        offset = sum(len(p) for p in pending)
        for i, image_id in enumerate(ids):
            index_rows.append((int(image_id), shard, offset + i))
        pending.append(maps)
        descriptors.append(bilinear_descriptors(maps))
        if offset + len(maps) >= config.shard_size:
            flush()

    extract_filter_maps(uris, model, image_size=config.image_size, batch_size=config.batch_size,
                        num_workers=config.num_workers, device=device,
                        precision=config.precision, on_batch=on_batch)
    flush()
    storage.write_npy(np.concatenate(descriptors),
                      storage.join(features_uri, f"descriptors-{config.backbone}.npy"))
    described = [config.backbone]
    second = config.descriptor_backbone
    if second not in ("none", config.backbone):
        other, _ = load_backbone(second)
        extra: list[np.ndarray] = []
        extract_filter_maps(uris, other, image_size=config.image_size,
                            batch_size=config.batch_size, num_workers=config.num_workers,
                            device=device, precision=config.precision,
                            on_batch=lambda _start, maps: extra.append(bilinear_descriptors(maps)))
        storage.write_npy(np.concatenate(extra),
                          storage.join(features_uri, f"descriptors-{second}.npy"))
        described.append(second)
    index = np.asarray(index_rows, dtype=np.int64)
    storage.write_parquet(pa.table({"image_id": index[:, 0], "shard": index[:, 1],
                                    "row": index[:, 2]}),
                          storage.join(features_uri, "index.parquet"))
    storage.write_json({"shape": shape, "num_images": len(uris), "num_shards": shard,
                        "backbone": config.backbone, "weights": weights_source,
                        "descriptors": described,
                        "image_size": config.image_size, "goggles_version": __version__},
                       storage.join(features_uri, "meta.json"))
    prototypes = Prototypes.concatenate(prototype_parts, shape[0])
    found = len(prototypes)
    if config.max_prototypes:
        from goggles.budget import select_within_budget

        prototypes = prototypes.take(select_within_budget(len(prototypes), config.max_prototypes,
                                                          seed=config.seed))
    storage.write_parquet(prototypes.to_table(), prototypes_uri)
    return {"n_images": len(uris), "num_prototypes": len(prototypes), "prototypes_found": found,
            "filter_map_shape": shape, "backbone": config.backbone,
            "weights_source": weights_source, "device": str(device)}


def read_filter_maps(features_uri: str, start: int, stop: int) -> np.ndarray:
    """Filter maps of images ``start .. stop-1`` ([stop-start, C, H, W] float32)."""
    index = storage.read_parquet(storage.join(features_uri, "index.parquet")).sort_by("image_id")
    meta = storage.read_json(storage.join(features_uri, "meta.json"))
    ids = index["image_id"].to_numpy()
    if stop > len(ids) or start < 0 or start > stop:
        raise StageError(f"rows [{start}, {stop}) are outside the {len(ids)} extracted images")
    shards = index["shard"].to_numpy()[start:stop]
    offsets = index["row"].to_numpy()[start:stop]
    out = np.empty([stop - start, *meta["shape"]], dtype=np.float32)
    for shard in np.unique(shards):
        block = storage.read_npy(storage.join(features_uri, f"shard-{int(shard):05d}.npy"))
        where = np.flatnonzero(shards == shard)
        out[where] = block[offsets[where]]
    return out


# -- affinity --------------------------------------------------------------------------------------

def run_affinity(config: AffinityConfig, features_uri: str, prototypes_uri: str, shard_id: int,
                 affinity_uri: str) -> dict[str, Any]:
    """Rows of the affinity matrix for shard ``shard_id`` of ``config.num_shards`` (§3.2)."""
    from goggles.affinity import affinity_block, shard_bounds
    from goggles.features import Prototypes, resolve_device

    meta = storage.read_json(storage.join(features_uri, "meta.json"))
    num_images = int(meta["num_images"])
    bounds = shard_bounds(num_images, config.num_shards)
    if not 0 <= shard_id < config.num_shards:
        raise StageError(f"shard_id {shard_id} is outside 0..{config.num_shards - 1}")
    start, stop = bounds[shard_id]
    prototypes = Prototypes.from_table(storage.read_parquet(prototypes_uri))
    maps = read_filter_maps(features_uri, start, stop)
    block = affinity_block(maps, prototypes.vectors, memory_mb=config.memory_mb,
                           dtype=config.dtype, device=resolve_device(config.device))
    storage.write_npy(block, storage.join(affinity_uri, "affinity.npy"))
    storage.write_json({"start": start, "stop": stop, "shard_id": shard_id,
                        "num_shards": config.num_shards, "num_prototypes": len(prototypes),
                        "dtype": config.dtype}, storage.join(affinity_uri, "meta.json"))
    return {"start": start, "stop": stop, "num_prototypes": len(prototypes)}


# -- infer -----------------------------------------------------------------------------------------

LABELS_SCHEMA = pa.schema([
    ("image_id", pa.int64()), ("uri", pa.string()), ("probs", pa.list_(pa.float64())),
    ("label", pa.int64()), ("label_name", pa.string()), ("confidence", pa.float64()),
])


def infer_labels(affinity: np.ndarray | RowBlocks, source_index: np.ndarray,
                 config: InferConfig, *, filter_maps: FilterMaps | None = None,
                 descriptors: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
    """Posteriors [N, K] for ``config.method`` and the fitted estimator; ``affinity`` is an
    [N, M] array or row blocks (e.g. the stored shards, streamed). ``graph-em`` is
    :mod:`goggles.graph`, ``pgm`` and ``backbone`` are :mod:`goggles.baselines`; ``graph-em``
    and ``backbone`` read ``filter_maps``; graph EM takes the stored ``descriptors`` instead
    when given."""
    from goggles.baselines import BASELINES, fit_baseline, fit_gaussians
    from goggles.inference import AffinityEM

    if config.method in BASELINES:
        return fit_baseline(affinity, source_index, config, filter_maps=filter_maps)
    if config.method == "graph-em":
        from goggles.graph import GraphEM, descriptors_of

        if descriptors is None:
            if filter_maps is None:
                raise ValueError("method 'graph-em' needs the images' descriptors or their "
                                 "filter maps (the extract stage's features); pass one to "
                                 "infer_labels")
            descriptors = [descriptors_of(filter_maps.blocks())]
        graph = GraphEM(num_classes=config.num_classes, max_iter=config.max_iter,
                        tol=config.tol, n_init=config.n_init, random_state=config.seed)
        graph.fit(affinity, source_index, descriptors)
        assert graph.posteriors_ is not None
        # the per-prototype Gaussians under the final labels, for the report's histograms
        graph.params_, graph.prototype_class_ = fit_gaussians(
            affinity, graph.posteriors_.argmax(axis=1), source_index, config.num_classes,
            variance_floor=config.variance_floor, exclude_self=config.exclude_self)
        return graph.posteriors_, graph
    model = AffinityEM(num_classes=config.num_classes,
                       init="random" if config.method == "em-random" else "kmeans",
                       max_iter=config.max_iter, tol=config.tol, m_step=config.m_step,
                       variance_floor=config.variance_floor, exclude_self=config.exclude_self,
                       n_init=config.n_init, random_state=config.seed, device=config.device)
    if config.method == "kmeans":
        model.max_iter = 1
    model.fit(affinity, source_index)
    if config.method == "kmeans":
        assert model.initial_labels_ is not None
        probs = np.eye(config.num_classes)[model.initial_labels_]
    else:
        probs = model.posteriors_
    return probs, model


def _features_meta(features_uri: str, meta: dict[str, Any] | None) -> dict[str, Any]:
    return meta if meta is not None else storage.read_json(storage.join(features_uri, "meta.json"))


def stored_filter_maps(features_uri: str, rows_per_block: int = 1024,
                       meta: dict[str, Any] | None = None) -> FilterMaps:
    """The extract stage's filter maps as a :class:`goggles.baselines.FilterMaps` (read a block
    of rows at a time, in image order); ``meta`` is the folder's meta.json if already read."""
    from goggles.baselines import FilterMaps

    meta = _features_meta(features_uri, meta)
    weights = str(meta.get("weights", ""))
    # a source that is a file or URI is reused; "package ..." and the like resolve again
    weights_uri = weights if "://" in weights or weights.startswith("/") else ""
    total = int(meta["num_images"])

    def blocks() -> Iterator[np.ndarray]:
        for start in range(0, total, rows_per_block):
            yield read_filter_maps(features_uri, start, min(total, start + rows_per_block))

    return FilterMaps(backbone=str(meta["backbone"]), blocks=blocks, weights_uri=weights_uri)


def stored_descriptors(features_uri: str,
                       meta: dict[str, Any] | None = None) -> list[np.ndarray] | None:
    """The bilinear descriptors the extract stage wrote ([N, D] per network), or ``None`` for a
    features folder from before they existed (graph EM then computes them from the maps)."""
    meta = _features_meta(features_uri, meta)
    if "descriptors" not in meta:
        return None
    return [storage.read_npy(storage.join(features_uri, f"descriptors-{name}.npy"))
            for name in meta["descriptors"]]


def run_infer(config: InferConfig, manifest_uri: str, prototypes_uri: str,
              affinity_uris: Sequence[str], labels_uri: str, inference_uri: str,
              dev_labels_uri: str = "", features_uri: str = "") -> dict[str, Any]:
    """Probabilistic labels by EM on the affinity matrix (paper §4), or by a baseline
    (``config.method``; ``backbone`` reads the filter maps under ``features_uri``)."""
    rows = accepted(storage.read_parquet(manifest_uri))
    n = rows.num_rows
    if config.num_classes > n:
        raise StageError(f"num_classes={config.num_classes} exceeds the {n} accepted images; "
                         f"use at most {n} classes or add images")
    affinity = StoredShards(affinity_uris)  # streamed: the shards are never concatenated
    prototypes = storage.read_parquet(prototypes_uri, columns=["prototype_id", "image_id"])
    source_index = prototypes.sort_by("prototype_id")["image_id"].to_numpy()
    if affinity.shape != (n, len(source_index)):
        raise StageError(f"affinity is {affinity.shape} but there are {n} images and "
                         f"{len(source_index)} prototypes; rerun the affinity stage")
    reads_maps = config.method in ("backbone", "graph-em")
    if reads_maps and not features_uri:
        raise StageError(f"method {config.method!r} reads the filter maps: pass features_uri "
                         "(the extract stage's features)")
    filter_maps = descriptors = None
    if reads_maps:
        meta = storage.read_json(storage.join(features_uri, "meta.json"))
        filter_maps = stored_filter_maps(features_uri, meta=meta)
        if config.method == "graph-em":
            descriptors = stored_descriptors(features_uri, meta=meta)
    probs, model = infer_labels(affinity, source_index, config, filter_maps=filter_maps,
                                descriptors=descriptors)
    labels = probs.argmax(axis=1)
    names = list(getattr(model, "cluster_names_", None)
                 or [f"cluster_{k}" for k in range(config.num_classes)])
    dev: dict[str, Any] | None = None
    if dev_labels_uri:
        dev_rows, dev_names = read_dev_labels(dev_labels_uri, rows)
        names = name_clusters(dev_names, labels[dev_rows], config.num_classes)
        dev = {"rows": dev_rows.tolist(), "labels": dev_names}
    table = pa.table({
        "image_id": rows["image_id"], "uri": rows["uri"],
        "probs": pa.array(probs.tolist(), pa.list_(pa.float64())),
        "label": pa.array(labels, pa.int64()),
        "label_name": pa.array([names[k] for k in labels], pa.string()),
        "confidence": pa.array(probs.max(axis=1), pa.float64()),
    }, schema=LABELS_SCHEMA)
    storage.write_parquet(table, labels_uri)
    from goggles.report import informative_prototypes

    initial = model.initial_labels_
    state = {
        "method": config.method, "em_iterations": model.n_iter_ if config.method != "kmeans" else 0,
        "converged": bool(model.converged_) if config.method != "kmeans" else True,
        "initial_labels": None if initial is None else initial.tolist(), "cluster_names": names,
        "log_likelihood_trace": model.log_likelihood_trace_, "change_trace": model.change_trace_,
        "warnings": model.warnings_, "dev": dev,
        # the fitted Gaussians of the prototypes that separate the classes best (the report's
        # histograms and patches); all M x K of them would grow with N
        "prototypes": informative_prototypes(model.params_, model.prototype_class_),
    }
    storage.write_json(state, inference_uri)
    return {"num_prototypes": int(len(source_index)), "em_iterations": state["em_iterations"],
            "converged": state["converged"], "num_classes": config.num_classes}


def read_dev_labels(dev_labels_uri: str, rows: pa.Table) -> tuple[np.ndarray, list[str]]:
    """A dev set (CSV or Parquet of ``uri,label`` rows) matched to the accepted images ``rows``:
    ([D] row positions, [D] label names). URIs match exactly or by ``folder/name``."""
    if dev_labels_uri.endswith(".parquet"):
        dev = storage.read_parquet(dev_labels_uri)
    else:
        import pyarrow.csv as pacsv

        dev = pacsv.read_csv(pa.BufferReader(storage.read_bytes(dev_labels_uri)))
    missing = {"uri", "label"} - set(dev.column_names)
    if missing:
        raise StageError(f"dev labels {dev_labels_uri} lack column(s) {sorted(missing)}; "
                         "give a CSV or Parquet with columns uri,label")
    position = {uri: i for i, uri in enumerate(rows["uri"].to_pylist())}
    by_tail = {uri.rsplit("/", 2)[-2] + "/" + uri.rsplit("/", 1)[-1]: i
               for uri, i in position.items() if uri.count("/") >= 1}
    names, found = [], []
    for uri, label in zip(dev["uri"].to_pylist(), dev["label"].to_pylist(), strict=True):
        i = position.get(uri, by_tail.get("/".join(str(uri).rsplit("/", 2)[-2:])))
        if i is None:
            logger.warning("dev label for %s: no such accepted image; ignored", uri)
            continue
        names.append(str(label))
        found.append(i)
    if not names:
        raise StageError(f"none of the dev labels in {dev_labels_uri} match an accepted image; "
                         "use the same URIs (or folder/name) as the source")
    return np.asarray(found, dtype=np.int64), names


def dev_cluster_names(dev_labels_uri: str, rows: pa.Table, labels: np.ndarray,
                      num_classes: int) -> list[str]:
    """Cluster names from a dev set: a CSV or Parquet of ``uri,label`` rows."""
    dev_rows, names = read_dev_labels(dev_labels_uri, rows)
    return name_clusters(names, labels[dev_rows], num_classes)


# -- evaluate --------------------------------------------------------------------------------------

def run_evaluate(manifest_uri: str, labels_uri: str, inference_uri: str, metrics_uri: str,
                 *, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Metrics of the run (DESIGN.md's metrics contract); accuracy when ground truth exists."""
    manifest = storage.read_parquet(manifest_uri)
    rows = accepted(manifest)
    labels = storage.read_parquet(labels_uri).sort_by("image_id")
    state = storage.read_json(inference_uri)
    num_classes = len(state["cluster_names"])
    metrics: dict[str, Any] = dict(extra or {})
    metrics.update({
        "n_images": rows.num_rows, "n_rejected": manifest.num_rows - rows.num_rows,
        "num_classes": num_classes, "method": state["method"],
        "em_iterations": state["em_iterations"], "converged": state["converged"],
        "warnings": state["warnings"], "goggles_version": __version__,
    })
    truth = rows["label"].to_pylist()
    initial = state.get("initial_labels")
    if truth and all(t is not None for t in truth) and len(set(truth)) > 1:
        metrics.update(evaluate(truth, labels["label"].to_numpy(), num_classes,
                                initial=None if initial is None else np.asarray(initial)))
        metrics.update(calibration(truth, np.asarray(labels["probs"].to_pylist())))
    if state.get("dev"):
        metrics["dev_set"] = dev_set_metrics(state["dev"]["rows"], state["dev"]["labels"],
                                             labels["label_name"].to_pylist(),
                                             truth if all(t is not None for t in truth) else None)
    storage.write_json(metrics, metrics_uri)
    return metrics


def timed(timings: dict[str, float], stage: str):  # type: ignore[no-untyped-def]
    """Context manager adding the wall time of a block to ``timings[stage]``."""
    class _Timer:
        def __enter__(self) -> None:
            self.start = time.perf_counter()

        def __exit__(self, *exc: object) -> None:
            timings[stage] = round(timings.get(stage, 0.0) + time.perf_counter() - self.start, 3)

    return _Timer()
