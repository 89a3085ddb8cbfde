"""The extract stage in parts: each part extracts one row shard of the accepted images, a gather
step selects and budgets the prototypes.

On a cluster every part is its own task (``dsl.ParallelFor``, one GPU each) and each affinity
shard task reads only its own part's filter maps; the in-process runner runs the same parts one
after another (:func:`run_extract`). A part writes two artifacts, so that what is small travels
apart from what is big:

* its **maps** (a features folder of its rows: ``shard-NNNNN.npy``, ``index.parquet``,
  ``descriptors-<network>.npy`` and ``imagenet-logits.npy`` when the backbone's weights carry
  an ImageNet classifier, ``meta.json`` whose ``part`` names ``shard_id``, ``num_parts``,
  ``start``, ``stop``), read by its affinity shard alone;
* its **summary** (``part.json``, ``candidates.parquet``: the candidate prototypes it kept for
  the budget), read by the gather step;
* on a cluster, its **descriptors** apart, which only the train task reads.

The gather step writes the run's **features** folder (``meta.json``, listing the parts) and
its **prototypes**: it reads no descriptor or filter map. In a run's output folder each part's
maps and descriptors lie in ``artifacts/features/part-NNNNN``; the features' ``meta.json``
lists the parts, so :func:`goggles.io.features_folder.read_filter_maps` and
:func:`~goggles.io.features_folder.stored_descriptors` read any rows there.

Parts are whole extraction batches (:func:`part_bounds`), so an image's filter maps are the same
bytes however many parts there are; the prototypes are chosen by keys of the images and
positions (:func:`goggles.features.budget.candidate_keys`), so the labels do not depend on the
number of parts (the local-runner tests check 1, 3 and 4).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from goggles import __version__
from goggles.config import StageError
from goggles.features.config import ExtractConfig
from goggles.io import artifacts, features_folder, storage

logger = logging.getLogger(__name__)

CANDIDATES = "candidates.parquet"
PART_META = "part.json"


def part_uri(features_uri: str, shard_id: int) -> str:
    """Where part ``shard_id``'s maps (and, in process, its summary) lie under a features
    folder."""
    return storage.join(features_uri, f"part-{shard_id:05d}")


def part_bounds(num_rows: int, num_parts: int, batch_size: int) -> list[tuple[int, int]]:
    """Row ranges ``[start, stop)`` of the parts: whole extraction batches of ``batch_size``
    where there are at least as many batches as parts, so every image meets the same batch-mates
    however many parts there are (a CNN's arithmetic may depend on its batch: MobileNetV2's
    result for a batch of one differs in the last bits on a CPU); otherwise near-equal rows
    (:func:`goggles.features.affinity.shard_bounds`)."""
    from goggles.features.affinity import shard_bounds

    batches = -(-num_rows // batch_size)
    if batches < num_parts:
        return shard_bounds(num_rows, num_parts)
    edges = [min(num_rows, batch * batch_size) for batch in
             np.linspace(0, batches, num_parts + 1).round().astype(int)]
    return [(int(edges[s]), int(edges[s + 1])) for s in range(num_parts)]


def run_extract_part(config: ExtractConfig, manifest_uri: str, shard_id: int, num_parts: int,
                     maps_uri: str, summary_uri: str, *, num_classes: int = 2,
                     descriptors_uri: str = "") -> dict[str, Any]:
    """Filter maps, prototypes (paper §3.1) and descriptors of row shard ``shard_id`` of
    ``num_parts`` of the manifest's accepted images (:func:`part_bounds`). The part keeps the
    candidate prototypes whose key is below its share of the cap ``config.max_prototypes`` asks
    for at this many images and ``num_classes`` classes (:func:`goggles.features.budget.
    part_share`), so the gather reads a few times the cap, not every candidate. The
    descriptors (and ImageNet logits) go with the maps and, when given, to ``descriptors_uri``
    (what a cluster's train task reads), not into the summary the gather reads. With
    ``config.feature_cache_uri`` only the images the cache lacks are computed. Returns the
    part's meta (``features_computed``, ``features_reused`` ...)."""
    from goggles.features.backbones import SPECS, load_backbone, preprocessing_of
    from goggles.features.budget import candidate_keys, part_share, prototype_budget
    from goggles.features.descriptors import bilinear_descriptors
    from goggles.features.device import resolve_device
    from goggles.features.extraction import extract_filter_maps
    from goggles.features.network import POOLED
    from goggles.features.prototypes import select_prototypes
    from goggles.inference.imagenet import imagenet_head

    rows = artifacts.accepted(storage.read_parquet(manifest_uri))
    if rows.num_rows == 0:
        raise StageError("the manifest has no accepted images; every file was rejected — see "
                         "the manifest's error column")
    n_images = rows.num_rows
    if not 0 <= shard_id < num_parts:
        raise StageError(f"shard_id {shard_id} is outside 0..{num_parts - 1}")
    start, stop = part_bounds(rows.num_rows, num_parts, config.batch_size)[shard_id]
    rows = rows.slice(start, stop - start)
    uris, hashes = rows["uri"].to_pylist(), rows["sha256"].to_pylist()
    image_ids = rows["image_id"].to_numpy()
    model, weights_source = load_backbone(config.backbone, config.weights_uri,
                                          config.weights_sha256)
    head = imagenet_head(config.backbone, config.weights_uri) \
        if config.backbone in SPECS and getattr(model, "has_imagenet_classifier", True) else None
    embeds = bool(getattr(model, "embeds", False))
    preprocessing = {config.backbone: preprocessing_of(model, config.image_size).to_dict()}
    device = resolve_device(config.device)
    writer = features_folder.FeaturesWriter(maps_uri, config.shard_size)
    candidates: list[artifacts.Prototypes] = []
    described: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    embedded: list[np.ndarray] = []
    options: dict[str, Any] = {"image_size": config.image_size, "batch_size": config.batch_size,
                               "num_workers": config.num_workers, "device": device,
                               "precision": config.precision}

    def on_batch(first: int, maps: np.ndarray) -> None:
        if first == 0 and config.top_k > maps.shape[1]:
            raise StageError(f"top_k={config.top_k} exceeds the {maps.shape[1]} channels of "
                             f"{config.backbone}'s filter map; use top_k <= {maps.shape[1]}")
        ids = image_ids[first:first + len(maps)]
        candidates.append(select_prototypes(maps, ids, config.top_k))
        writer.add_maps(ids, maps)
        described.append(bilinear_descriptors(maps))
        if head is not None:
            logits.append(head(maps))

    def on_embedding(_first: int, values: np.ndarray) -> None:
        norms = np.linalg.norm(values, axis=1, keepdims=True)
        embedded.append((values / np.maximum(norms, 1e-12)).astype(np.float32))

    counts = {"features_computed": len(uris), "features_reused": 0}
    if config.feature_cache_uri:
        from goggles.features import incremental

        def cache(kind: str) -> Any:
            return incremental.open_cache(config.feature_cache_uri, kind, config.backbone,
                                          model, image_size=config.image_size, device=device,
                                          precision=config.precision)

        found = incremental.cached_features(
            cache("maps"), uris, hashes, model, options, batch_size=config.batch_size,
            on_batch=on_batch, pooled=cache("pooled") if embeds else None,
            on_embedding=on_embedding)
        counts = {"features_computed": found.computed, "features_reused": found.reused}
    else:
        _checked(uris, hashes, lambda **check: extract_filter_maps(
            uris, model, on_batch=on_batch, on_embedding=on_embedding, **check, **options))
    descriptors = {config.backbone: np.concatenate(described)}
    channels = {config.backbone: int(writer.shape[0])}
    if embeds:  # a transformer's pooled (class-token) embedding: one more view for graph EM
        descriptors[config.backbone + POOLED] = np.concatenate(embedded)
        channels[config.backbone + POOLED] = 0
    second = config.descriptor_backbone
    if second not in ("none", config.backbone):
        descriptors[second], channels[second], preprocessing[second] = _second_descriptors(
            config, second, uris, hashes, options)
    part = {"shard_id": shard_id, "num_parts": num_parts, "start": start, "stop": stop}
    meta = writer.finish(backbone=config.backbone, weights=weights_source,
                         image_size=config.image_size,
                         part={**part, "descriptors": list(descriptors),
                               "imagenet_logits": head is not None})
    for network, values in descriptors.items():  # the maps carry them to the shard tasks too
        for uri in dict.fromkeys(u for u in (maps_uri, descriptors_uri) if u):
            storage.write_npy(values, storage.join(uri, features_folder.descriptor_file(network)))
    if head is not None:
        for uri in dict.fromkeys(u for u in (maps_uri, descriptors_uri) if u):
            storage.write_npy(np.concatenate(logits).astype(np.float32),
                              storage.join(uri, features_folder.IMAGENET_LOGITS))
    every = artifacts.Prototypes.concatenate(candidates, int(meta["shape"][0]))
    share = part_share(prototype_budget(config.max_prototypes, n_images, num_classes).cap,
                       n_images, config.top_k)
    kept = every if share >= 1.0 else every.take(np.flatnonzero(
        candidate_keys(every.image_id, every.h, every.w, seed=config.seed) < share))
    storage.write_parquet(kept.to_table(), storage.join(summary_uri, CANDIDATES))
    summary = {**part, "candidates_found": len(every), "candidates_kept": len(kept),
               "shape": meta["shape"], "backbone": config.backbone,
               "weights": weights_source, "image_size": config.image_size,
               "descriptors": list(descriptors), "imagenet_logits": head is not None,
               "channels": channels, "preprocessing": preprocessing,
               "device": str(device), "goggles_version": __version__, **counts}
    storage.write_json(summary, storage.join(summary_uri, PART_META))
    return summary


def _second_descriptors(config: ExtractConfig, network: str, uris: Sequence[str],
                        hashes: Sequence[str], options: dict[str, Any],
                        ) -> tuple[np.ndarray, int, dict[str, Any]]:
    """Graph EM's second network's descriptors of ``uris`` (one more pass, or the cache), the
    channels of its maps and its preprocessing."""
    from goggles.features.backbones import load_backbone, preprocessing_of
    from goggles.features.descriptors import bilinear_descriptors
    from goggles.features.extraction import extract_filter_maps
    from goggles.features.incremental import output_shapes

    other, _ = load_backbone(network)
    channels = int(output_shapes(network, other, config.image_size)[0][0])
    preprocessing = preprocessing_of(other, config.image_size).to_dict()
    if config.feature_cache_uri:
        from goggles.features import incremental

        cache = incremental.open_cache(config.feature_cache_uri, "descriptor", network, other,
                                       image_size=config.image_size, device=options["device"],
                                       precision=config.precision)
        described, _ = incremental.cached_descriptors(cache, uris, hashes, other, options,
                                                      batch_size=config.batch_size)
        return described, channels, preprocessing
    extra: list[np.ndarray] = []
    _checked(uris, hashes, lambda **check: extract_filter_maps(
        uris, other, **options, **check, desc="extract descriptors",
        on_batch=lambda _s, maps: extra.append(bilinear_descriptors(maps))))
    return np.concatenate(extra), channels, preprocessing


def _checked(uris: Sequence[str], hashes: Sequence[str], extract: Callable[..., None]) -> None:
    """``extract(hashes=, changed=)`` with every image's bytes checked against the manifest's
    sha256 as they are read; raises :class:`goggles.io.images.ImageChanged` naming those that
    changed since ingest."""
    from goggles.io.images import ImageChanged

    changed: list[int] = []
    extract(hashes=list(hashes), changed=changed)
    if changed:
        raise ImageChanged([uris[i] for i in sorted(set(changed))])


def read_parts(summary_uris: Sequence[str]) -> list[dict[str, Any]]:
    """The parts' summaries in row order, each with its ``uri``; checks they are one run's
    parts and cover every row once."""
    parts = sorted(({**storage.read_json(storage.join(uri, PART_META)), "uri": uri}
                    for uri in summary_uris), key=lambda p: int(p["shard_id"]))
    if not parts:
        raise StageError("no extraction parts to gather")
    expected = int(parts[0]["num_parts"])
    ids = [int(p["shard_id"]) for p in parts]
    if ids != list(range(expected)):
        raise StageError(f"extraction parts {ids} are not the {expected} parts 0..{expected - 1} "
                         "of one run; rerun the extract tasks")
    for before, after in zip(parts, parts[1:], strict=False):
        if int(before["stop"]) != int(after["start"]):
            raise StageError("extraction parts do not tile the images: part "
                             f"{before['shard_id']} stops at {before['stop']} but part "
                             f"{after['shard_id']} starts at {after['start']}")
    return parts


def run_gather(config: ExtractConfig, summary_uris: Sequence[str], features_uri: str,
               prototypes_uri: str, *, num_classes: int = 2) -> dict[str, Any]:
    """Join the parts (:func:`read_parts`): the candidate prototypes they kept, in image order,
    cut to the cap ``config.max_prototypes`` asks for at this many images and ``num_classes``
    classes by their keys (:func:`goggles.features.budget.select_within_budget`: a uniform
    sample that does not depend on the parts; the result's ``prototype_budget`` says which cap
    and why). Writes the prototypes and the features folder's ``meta.json``, which lists the
    parts: each image's descriptors and ImageNet logits stay in its part
    (:func:`goggles.io.features_folder.stored_descriptors` reads them there), so this step
    reads no descriptor."""
    from goggles.features.budget import candidate_keys, prototype_budget, select_within_budget

    parts = read_parts(summary_uris)
    first = parts[0]
    candidates = [artifacts.read_prototypes(storage.join(p["uri"], CANDIDATES)) for p in parts]
    prototypes = artifacts.Prototypes.concatenate(candidates, int(first["shape"][0]))
    found = sum(int(p.get("candidates_found", len(c))) for p, c in zip(parts, candidates,
                                                                         strict=True))
    n_images = int(parts[-1]["stop"])
    budget = prototype_budget(config.max_prototypes, n_images, num_classes)
    if budget.cap:
        prototypes = prototypes.take(select_within_budget(
            candidate_keys(prototypes.image_id, prototypes.h, prototypes.w, seed=config.seed),
            budget.cap))
    if budget.cap and len(prototypes) < min(found, budget.cap):
        logger.warning("the parts kept %d candidate prototypes, fewer than the cap %d of the %d "
                       "found: A has %d columns", len(prototypes), budget.cap, found,
                       len(prototypes))
    storage.write_parquet(prototypes.to_table(), prototypes_uri)
    counts = {key: sum(int(p[key]) for p in parts)
              for key in ("features_computed", "features_reused")}
    meta = {"shape": first["shape"], "num_images": n_images, "backbone": first["backbone"],
            "weights": first["weights"], "image_size": first["image_size"],
            "descriptors": first["descriptors"], "imagenet_logits": first["imagenet_logits"],
            "parts": [{key: p[key] for key in ("shard_id", "start", "stop")} for p in parts],
            "goggles_version": __version__, **counts}
    described: dict[str, Any] = {key: first[key] for key in ("channels", "preprocessing")
                                 if key in first}
    meta.update(described)
    storage.write_json(meta, storage.join(features_uri, "meta.json"))
    return {"n_images": n_images, "num_prototypes": len(prototypes), "prototypes_found": found,
            "prototype_budget": {**budget.to_dict(), "binds": found > len(prototypes)},
            "filter_map_shape": first["shape"], "backbone": first["backbone"],
            "weights_source": first["weights"], "device": first["device"], **counts,
            **{key: value for key, value in described.items() if key == "preprocessing"}}


def run_extract(config: ExtractConfig, manifest_uri: str, features_uri: str,
                prototypes_uri: str, num_parts: int = 1, *, num_classes: int = 2,
                ) -> dict[str, Any]:
    """The whole extract stage in this process: every part (its maps and summary in
    :func:`part_uri`) one after another, then the gather."""
    uris = [part_uri(features_uri, s) for s in range(num_parts)]
    for shard_id, uri in enumerate(uris):
        run_extract_part(config, manifest_uri, shard_id, num_parts, uri, uri,
                         num_classes=num_classes)
    return run_gather(config, uris, features_uri, prototypes_uri, num_classes=num_classes)
