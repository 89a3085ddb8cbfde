"""The features of new images, computed as the extract stage computes a run's.

One pass of each network over the images (:func:`goggles.features.extraction.
extract_filter_maps`, the same preprocessing): each batch of filter maps becomes bilinear
descriptors (:mod:`goggles.features.descriptors`) and, for the first network when the run's
prototypes are given, rows of A against them (:func:`goggles.features.affinity.affinity_block`).
Filter maps are never kept.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Described:
    """New images' descriptors (one [n, 2048] per network, in the order asked), their rows of A
    ([n, M], or ``None``), and the seconds each part took (``load``: the networks' weights;
    ``extract``: their forward passes with decoding)."""

    descriptors: list[np.ndarray]
    affinity: np.ndarray | None
    seconds: dict[str, float]


def describe_images(uris: Sequence[str], networks: Sequence[tuple[str, str]], *,
                    prototypes: np.ndarray | None = None, image_size: int = 224,
                    device: str = "auto", batch_size: int = 32,
                    num_workers: int = -1, hashes: Sequence[str] | None = None) -> Described:
    """Descriptors of the images at ``uris`` for each (backbone, weights URI) of ``networks``
    and, with ``prototypes`` [M, C] of the first network, their rows of A. A name
    ``<backbone>@pooled`` is that network's unit pooled embedding, from the same pass as its
    bilinear descriptors (the weights of the network's first entry are used). With ``hashes``
    (the manifest's sha256 of each image) the bytes read are checked against them: an image
    that changed since ingest raises :class:`goggles.io.images.ImageChanged`."""
    from goggles.features.affinity import affinity_block
    from goggles.features.backbones import load_backbone
    from goggles.features.descriptors import SKETCH_DIM, bilinear_descriptors
    from goggles.features.device import resolve_device
    from goggles.features.extraction import extract_filter_maps
    from goggles.features.network import POOLED
    from goggles.io.images import ImageChanged

    resolved = resolve_device(device)
    found: dict[str, np.ndarray] = {}
    rows: list[np.ndarray] = []
    seconds = {"load": 0.0, "extract": 0.0, "describe": 0.0, "affinity": 0.0}
    passes: dict[str, str] = {}
    for name, weights in networks:
        passes.setdefault(name.removesuffix(POOLED), weights)
    for index, (backbone, weights) in enumerate(passes.items()):
        began = time.perf_counter()
        model, _ = load_backbone(backbone, weights)
        seconds["load"] += time.perf_counter() - began
        parts: list[np.ndarray] = []
        pooled: list[np.ndarray] = []

        def on_embedding(_start: int, values: np.ndarray,
                         pooled: list[np.ndarray] = pooled) -> None:
            norms = np.linalg.norm(values, axis=1, keepdims=True)
            pooled.append((values / np.maximum(norms, 1e-12)).astype(np.float32))

        def on_batch(_start: int, maps: np.ndarray, first: bool = index == 0,
                     parts: list[np.ndarray] = parts) -> None:
            began = time.perf_counter()
            parts.append(bilinear_descriptors(maps))
            seconds["describe"] += time.perf_counter() - began
            if first and prototypes is not None:
                began = time.perf_counter()
                rows.append(affinity_block(maps, prototypes, device=resolved))
                seconds["affinity"] += time.perf_counter() - began

        began = time.perf_counter()
        if len(uris):
            changed: list[int] = []
            extract_filter_maps(uris, model, image_size=image_size, batch_size=batch_size,
                                num_workers=num_workers, device=resolved, on_batch=on_batch,
                                on_embedding=on_embedding, hashes=hashes, changed=changed)
            if changed:
                raise ImageChanged([uris[i] for i in sorted(set(changed))])
        seconds["extract"] += time.perf_counter() - began
        found[backbone] = np.concatenate(parts) if parts else np.zeros((0, SKETCH_DIM),
                                                                        np.float32)
        if pooled:
            found[backbone + POOLED] = np.concatenate(pooled)
    missing = [name for name, _ in networks if name not in found]
    if missing and len(uris):
        raise ValueError(f"{', '.join(missing)}: these networks give no pooled embedding; "
                         "the run that trained this model used other networks")
    descriptors = [found.get(name, np.zeros((0, 0), np.float32)) for name, _ in networks]
    seconds["extract"] -= seconds["describe"] + seconds["affinity"]
    affinity = None
    if prototypes is not None:
        affinity = np.concatenate(rows) if rows else np.zeros((0, len(prototypes)), np.float32)
    return Described(descriptors, affinity,
                     {name: round(value, 3) for name, value in seconds.items()})
