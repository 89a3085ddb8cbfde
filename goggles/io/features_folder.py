"""The features artifact (the extract stage's): a folder of filter maps, descriptors and
meta, its writer and its readers.

A features folder holds ``shard-NNNNN.npy`` ([n, C, H, W] float32 filter maps),
``index.parquet`` (``image_id``, ``shard``, ``row``), ``descriptors-<network>.npy`` ([N, D]
float32 bilinear descriptors, one per network), ``imagenet-logits.npy`` ([N, 1000], when the
backbone's weights carry the classifier) and ``meta.json`` (``shape`` [C, H, W], ``num_images``,
``backbone``, ``weights``, ``descriptors`` ...). The extract stage writes one folder of maps per
part and a gathered folder whose ``meta.json`` lists the ``parts`` (``part-NNNNN`` under it in a
run's output folder; :mod:`goggles.pipeline.extract`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from goggles import __version__
from goggles.config import backbone_file_name
from goggles.io import storage


def descriptor_file(network: str) -> str:
    """The file name of ``network``'s descriptors in a features folder (``network`` may be a
    model spec, or a spec's pooled view ``<spec>@pooled``)."""
    return f"descriptors-{backbone_file_name(network)}.npy"


class FeaturesWriter:
    """Writes a features folder: filter maps in shards of ``shard_size`` images as they come,
    descriptors per network, then the index and ``meta.json`` (:meth:`finish`)."""

    def __init__(self, uri: str, shard_size: int):
        self.uri, self.shard_size = uri, shard_size
        self._pending: list[np.ndarray] = []
        self._index: list[tuple[int, int, int]] = []
        self._shard = 0
        self.shape: list[int] = []
        self.described: list[str] = []

    def add_maps(self, image_ids: np.ndarray, maps: np.ndarray) -> None:
        """Filter maps [n, C, H, W] of the images ``image_ids`` [n], in image order."""
        self.shape = list(maps.shape[1:])
        offset = sum(len(p) for p in self._pending)
        self._index += [(int(i), self._shard, offset + row) for row, i in enumerate(image_ids)]
        self._pending.append(maps)
        if offset + len(maps) >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            storage.write_npy(np.concatenate(self._pending),
                              storage.join(self.uri, f"shard-{self._shard:05d}.npy"))
            self._pending.clear()
            self._shard += 1

    def add_descriptors(self, network: str, descriptors: np.ndarray) -> None:
        """Descriptors [N, D] of every image, from ``network``."""
        storage.write_npy(descriptors, storage.join(self.uri, descriptor_file(network)))
        self.described.append(network)

    def finish(self, **meta: Any) -> dict[str, Any]:
        """Write the last shard, ``index.parquet`` and ``meta.json`` (``meta`` plus the shape,
        counts, descriptors and version); returns the meta."""
        self._flush()
        index = np.asarray(self._index, dtype=np.int64).reshape(-1, 3)
        storage.write_parquet(pa.table({"image_id": index[:, 0], "shard": index[:, 1],
                                        "row": index[:, 2]}),
                              storage.join(self.uri, "index.parquet"))
        meta = {"shape": self.shape, "num_images": len(index), "num_shards": self._shard,
                "descriptors": self.described, "goggles_version": __version__, **meta}
        storage.write_json(meta, storage.join(self.uri, "meta.json"))
        return meta


def read_features_meta(features_uri: str) -> dict[str, Any]:
    return storage.read_json(storage.join(features_uri, "meta.json"))  # type: ignore[no-any-return]


def read_filter_maps(features_uri: str, start: int, stop: int,
                     meta: dict[str, Any] | None = None) -> np.ndarray:
    """Filter maps of images ``start .. stop-1`` ([stop-start, C, H, W] float32), from a
    features folder of maps or, when its ``meta.json`` lists ``parts``, from the parts' folders
    under it (``part-NNNNN``, :mod:`goggles.pipeline.extract`)."""
    meta = meta if meta is not None else read_features_meta(features_uri)
    if "parts" in meta:
        out = np.empty([stop - start, *meta["shape"]], dtype=np.float32)
        if stop > int(meta["num_images"]) or start < 0 or start > stop:
            raise ValueError(f"rows [{start}, {stop}) are outside the {meta['num_images']} "
                             "extracted images")
        for part in meta["parts"]:
            lo, hi = max(start, int(part["start"])), min(stop, int(part["stop"]))
            if lo < hi:
                uri = storage.join(features_uri, f"part-{int(part['shard_id']):05d}")
                out[lo - start:hi - start] = read_filter_maps(uri, lo - int(part["start"]),
                                                              hi - int(part["start"]))
        return out
    index = storage.read_parquet(storage.join(features_uri, "index.parquet")).sort_by("image_id")
    ids = index["image_id"].to_numpy()
    if stop > len(ids) or start < 0 or start > stop:
        raise ValueError(f"rows [{start}, {stop}) are outside the {len(ids)} extracted images")
    shards = index["shard"].to_numpy()[start:stop]
    offsets = index["row"].to_numpy()[start:stop]
    out = np.empty([stop - start, *meta["shape"]], dtype=np.float32)
    for shard in np.unique(shards):
        block = storage.read_npy(storage.join(features_uri, f"shard-{int(shard):05d}.npy"))
        where = np.flatnonzero(shards == shard)
        out[where] = block[offsets[where]]
    return out


@dataclass(frozen=True)
class FilterMaps:
    """Filter maps of the images in row order, for the methods that read them.

    ``blocks()`` yields [n, C, H, W] float32 arrays that tile the N rows in order; ``backbone``
    and ``weights_uri`` name the network they came from (``""``: resolved as for extraction).
    """

    backbone: str
    blocks: Callable[[], Iterator[np.ndarray]]
    weights_uri: str = ""


def reusable_weights(source: str) -> str:
    """The weights to load again for a network whose features record weights ``source``: the
    file or URI itself, or ``""`` when it was resolved (a package, baked weights, torchvision's
    cache: resolved again the same way)."""
    return source if "://" in source or source.startswith("/") else ""


def stored_filter_maps(features_uri: str, rows_per_block: int = 1024,
                       meta: dict[str, Any] | None = None) -> FilterMaps:
    """A features folder's filter maps as :class:`FilterMaps`, read a block of rows at a time."""
    meta = meta if meta is not None else read_features_meta(features_uri)
    weights_uri = reusable_weights(str(meta.get("weights", "")))
    total = int(meta["num_images"])

    def blocks() -> Iterator[np.ndarray]:
        for start in range(0, total, rows_per_block):
            yield read_filter_maps(features_uri, start, min(total, start + rows_per_block),
                                   meta)

    return FilterMaps(backbone=str(meta["backbone"]), blocks=blocks, weights_uri=weights_uri)


def stored_array(features_uri: str, name: str, meta: dict[str, Any] | None = None, *,
                 part_uris: Sequence[str] | None = None) -> np.ndarray:
    """One per-image array of a features folder (a network's descriptors, the ImageNet logits:
    file ``name``), [N, ...]: the folder's own file, else joined from its parts in row order
    (the parts of a gathered folder lie under it, ``part-NNNNN``; ``part_uris`` names them
    where they lie elsewhere, e.g. a cluster's extract artifacts, in row order)."""
    meta = meta if meta is not None else read_features_meta(features_uri)
    joined = storage.join(features_uri, name)
    if part_uris is None and ("parts" not in meta or storage.exists(joined)):
        return storage.read_npy(joined)
    uris = list(part_uris) if part_uris is not None else [
        storage.join(features_uri, f"part-{int(part['shard_id']):05d}")
        for part in sorted(meta["parts"], key=lambda part: int(part["start"]))]
    return np.concatenate([storage.read_npy(storage.join(uri, name)) for uri in uris])


def stored_descriptors(features_uri: str, meta: dict[str, Any] | None = None, *,
                       part_uris: Sequence[str] | None = None) -> list[np.ndarray] | None:
    """The descriptors a features folder holds ([N, D] per network; :func:`stored_array`), or
    ``None`` for a folder from before they existed (graph EM then computes them from the
    maps)."""
    meta = meta if meta is not None else read_features_meta(features_uri)
    if "descriptors" not in meta:
        return None
    return [stored_array(features_uri, descriptor_file(name), meta, part_uris=part_uris)
            for name in meta["descriptors"]]


IMAGENET_LOGITS = "imagenet-logits.npy"
"""In a features folder: the backbone's ImageNet logits [N, 1000], when its weights carry the
classifier (the ``backbone`` method reads them)."""


def method_inputs(features_uri: str, reads: Iterable[str]) -> dict[str, Any]:
    """What an inference method ``reads`` (:class:`goggles.inference.base.Method`) from a
    features folder, as :meth:`fit`'s keyword arguments."""
    meta = read_features_meta(features_uri)
    inputs: dict[str, Any] = {}
    for name in reads:
        if name == "descriptors":
            inputs[name] = stored_descriptors(features_uri, meta=meta)
            if inputs[name] is None:  # from before descriptors were kept: from the maps
                inputs["filter_maps"] = stored_filter_maps(features_uri, meta=meta)
        elif name == "imagenet_logits":
            if not meta.get("imagenet_logits"):
                raise ValueError(f"the features at {features_uri} hold no ImageNet logits: "
                                 f"{meta.get('backbone')}'s weights carry no classifier")
            inputs[name] = stored_array(features_uri, IMAGENET_LOGITS, meta)
        elif name == "filter_maps":
            inputs[name] = stored_filter_maps(features_uri, meta=meta)
        else:
            raise ValueError(f"a method reads {name!r}, which a features folder does not hold")
    return inputs


