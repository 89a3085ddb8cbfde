"""Extraction through the feature cache (:mod:`goggles.features.cache`): compute the images the
cache lacks, then hand every image's filter maps to the caller in image order, as
:func:`goggles.features.extraction.extract_filter_maps` does.

Two passes, so memory stays one batch whatever the number of images: the misses are extracted
and written to the cache, then the batches are read back from it in order. What the caller gets
is therefore always the cache's copy, bit for bit the same on a cold and a warm run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from goggles.config import BACKBONE_CHANNELS
from goggles.features.backbones import preprocessing_of
from goggles.features.cache import FeatureCache, weights_digest
from goggles.features.descriptors import SKETCH_DIM, bilinear_descriptors
from goggles.features.device import autocast_dtype
from goggles.features.extraction import extract_filter_maps
from goggles.io.images import ImageChanged

logger = logging.getLogger(__name__)


@dataclass
class CacheCounts:
    """Images whose features were computed on this run, and those read from the cache."""

    computed: int = 0
    reused: int = 0


def _arithmetic(device: Any, precision: str) -> str:
    dtype = autocast_dtype(device, precision)
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def output_shapes(network: str, model: Any, image_size: int) -> tuple[tuple[int, ...], ...]:
    """The shape of one image's filter map [C, H, W] and, for a model with a pooled view, of
    its embedding [D]: today's two networks' from their channels (both downsample by 32),
    a family's from a forward pass of one blank image."""
    if network in BACKBONE_CHANNELS:
        side = image_size // 32
        return ((BACKBONE_CHANNELS[network], side, side),)
    size = preprocessing_of(model, image_size).image_size
    with torch.inference_mode():
        out = model(torch.zeros(1, 3, size, size))
    return tuple(tuple(part.shape[1:]) for part in (out if isinstance(out, tuple) else (out,)))


def open_cache(uri: str, kind: str, network: str, model: Any, *, image_size: int,
               device: Any, precision: str) -> FeatureCache:
    """The cache of ``kind`` (``maps``, ``descriptor`` or ``pooled``) entries of ``model`` at
    ``uri``."""
    own = getattr(model, "preprocessing", None)
    if kind == "descriptor":
        shape: tuple[int, ...] = (SKETCH_DIM,)
    else:
        shapes = output_shapes(network, model, image_size)
        shape = shapes[0] if kind == "maps" else shapes[-1]
    return FeatureCache(uri, kind, network, weights_digest(model),
                        own.image_size if own is not None else image_size,
                        _arithmetic(device, precision), shape,
                        own.key() if own is not None else "")


def _fill(cache: FeatureCache, uris: Sequence[str], hashes: Sequence[str],
          indices: Sequence[int], model: Any, options: dict[str, Any],
          transform: Callable[[np.ndarray], np.ndarray],
          pooled: FeatureCache | None = None) -> None:
    """Extract the images at ``indices`` and put ``transform(maps)`` into the cache (and their
    embeddings into ``pooled``), each under the hash of the bytes it was computed from: every
    image's bytes are checked against its ``hashes`` entry as they are read, and one that
    changed since ingest is never put (raises :class:`goggles.io.images.ImageChanged` once the
    others are in)."""
    if not indices:
        return
    changed: list[int] = []

    def on_batch(start: int, maps: np.ndarray) -> None:
        values = transform(maps)
        rewritten = set(changed)
        for offset, value in enumerate(values):
            if start + offset not in rewritten:
                cache.put(hashes[indices[start + offset]], value)

    def on_embedding(start: int, embeddings: np.ndarray) -> None:
        assert pooled is not None
        rewritten = set(changed)
        for offset, value in enumerate(embeddings):
            if start + offset not in rewritten:
                pooled.put(hashes[indices[start + offset]], value)

    extract_filter_maps([uris[i] for i in indices], model, on_batch=on_batch,
                        on_embedding=on_embedding if pooled is not None else None,
                        hashes=[hashes[i] for i in indices], changed=changed, **options)
    if changed:
        raise ImageChanged([uris[indices[i]] for i in sorted(set(changed))])


def cached_features(cache: FeatureCache, uris: Sequence[str], hashes: Sequence[str],
                    model: Any, options: dict[str, Any], *, batch_size: int,
                    on_batch: Callable[[int, np.ndarray], None],
                    transform: Callable[[np.ndarray], np.ndarray] | None = None,
                    pooled: FeatureCache | None = None,
                    on_embedding: Callable[[int, np.ndarray], None] | None = None,
                    ) -> CacheCounts:
    """Every image's cached value (filter maps, or ``transform`` of them: a descriptor), in
    image order, ``batch_size`` images per ``on_batch(start, values)`` call; computes and stores
    the misses first. ``options`` are :func:`extract_filter_maps`' keyword arguments. With
    ``pooled`` (the cache of the model's embeddings), an image missing from either is computed,
    and ``on_embedding(start, embeddings)`` follows each ``on_batch``."""
    transform = transform or (lambda maps: maps)
    if pooled is not None:
        missing = set(cache.misses(list(hashes))) | set(pooled.misses(list(hashes)))
        misses = sorted(missing)
    else:
        misses = cache.misses(list(hashes))
    counts = CacheCounts(computed=len(misses), reused=len(hashes) - len(misses))
    logger.info("feature cache %s: %d of %d images to compute, %d reused", cache.namespace,
                counts.computed, len(hashes), counts.reused)
    _fill(cache, uris, hashes, misses, model, options, transform, pooled)
    for start in range(0, len(hashes), batch_size):
        stop = min(len(hashes), start + batch_size)
        values = [cache.get(hashes[i]) for i in range(start, stop)]
        gone = [start + j for j, value in enumerate(values) if value is None]
        if gone:  # deleted or damaged since the first pass: compute them again
            logger.warning("%d feature cache entries vanished during the run; recomputing",
                           len(gone))
            _fill(cache, uris, hashes, gone, model, options, transform, pooled)
            counts.computed += len(gone)
            counts.reused -= len([i for i in gone if i not in set(misses)])
            values = [cache.get(hashes[i]) for i in range(start, stop)]
            if any(value is None for value in values):
                raise OSError(f"the feature cache at {cache.uri} does not keep what is written "
                              "to it; check its permissions and free space, or run without "
                              "--feature-cache")
        on_batch(start, np.stack(values))  # type: ignore[arg-type]
        if pooled is not None and on_embedding is not None:
            embedded = [pooled.get(hashes[i]) for i in range(start, stop)]
            if any(value is None for value in embedded):
                raise OSError(f"the feature cache at {cache.uri} lost pooled embeddings during "
                              "the run; rerun, or run without --feature-cache")
            on_embedding(start, np.stack(embedded))  # type: ignore[arg-type]
    return counts


def cached_descriptors(cache: FeatureCache, uris: Sequence[str], hashes: Sequence[str],
                       model: Any, options: dict[str, Any], *, batch_size: int,
                       ) -> tuple[np.ndarray, CacheCounts]:
    """[N, D] bilinear descriptors of ``model``'s maps, through the cache."""
    parts: list[np.ndarray] = []
    counts = cached_features(cache, uris, hashes, model, options, batch_size=batch_size,
                             on_batch=lambda _start, values: parts.append(values),
                             transform=bilinear_descriptors)
    return np.concatenate(parts), counts
