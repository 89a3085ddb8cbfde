"""The artifacts the stages exchange: what each holds, its schema, and its one reader and writer.

======================  =====================================================================
artifact                content
======================  =====================================================================
manifest                Parquet, :data:`MANIFEST_SCHEMA`: one row per listed file, accepted
                        ones numbered ``image_id`` 0..N-1 in path order (ingest).
features                a folder (extract): its own module, :mod:`goggles.io.features_folder`.
prototypes              Parquet ``prototype_id, image_id, h, w, channel, vector`` (extract);
                        in memory a :class:`Prototypes`.
affinity shard          a folder per row shard (affinity): ``affinity.npy`` (rows
                        ``[start, stop)`` of A, [stop-start, M] float32) and ``meta.json``
                        (``start``, ``stop``, ``shard_id``, ``num_shards``,
                        ``num_prototypes``, ``dtype``); read back as :class:`StoredShards`.
labels                  Parquet, :data:`LABELS_SCHEMA` (infer).
inference               JSON: the fit's trace, start, warnings, cluster names, dev set and
                        the report's prototypes (infer; :mod:`goggles.inference.summary`).
model                   a folder (train): ``model.safetensors`` (the end classifier's
                        tensors) and ``model.json`` (classes, head, input, preprocessing,
                        training, evaluation); :mod:`goggles.training.model` documents both.
======================  =====================================================================

A run's output folder holds them as :func:`output_paths` lays out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from goggles import __version__
from goggles.config import StageError
from goggles.io import storage

logger = logging.getLogger(__name__)

# -- manifest --------------------------------------------------------------------------------------

MANIFEST_SCHEMA = pa.schema([
    ("image_id", pa.int64()), ("uri", pa.string()), ("sha256", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()), ("label", pa.string()),
    ("status", pa.string()), ("error", pa.string()),
])


def accepted(manifest: pa.Table) -> pa.Table:
    """Accepted rows, ordered by ``image_id``."""
    rows = manifest.filter(pc.equal(manifest["status"], "accepted"))
    return rows.sort_by("image_id")


# -- prototypes ------------------------------------------------------------------------------------

PROTOTYPE_COLUMNS = ("prototype_id", "image_id", "h", "w", "channel", "vector")


@dataclass
class Prototypes:
    """Prototypes of a set of images: ``vectors`` is [M, C] float32, the rest [M] int arrays
    (the source image, the position ``h, w`` in its filter map, the channel that chose it)."""

    image_id: np.ndarray
    h: np.ndarray
    w: np.ndarray
    channel: np.ndarray
    vectors: np.ndarray

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @classmethod
    def concatenate(cls, parts: Sequence[Prototypes], channels: int) -> Prototypes:
        if not parts:
            empty = np.zeros(0, np.int64)
            return cls(empty, empty, empty, empty, np.zeros((0, channels), np.float32))
        return cls(*(np.concatenate([getattr(p, f) for p in parts])
                     for f in ("image_id", "h", "w", "channel", "vectors")))

    def take(self, indices: np.ndarray) -> Prototypes:
        """The prototypes at ``indices``, in that order."""
        return Prototypes(self.image_id[indices], self.h[indices], self.w[indices],
                          self.channel[indices], self.vectors[indices])

    def to_table(self) -> pa.Table:
        count, channels = self.vectors.shape
        flat = pa.array(self.vectors.reshape(-1), pa.float32())
        return pa.table({
            "prototype_id": pa.array(np.arange(count, dtype=np.int64)),
            "image_id": pa.array(self.image_id.astype(np.int64)),
            "h": pa.array(self.h.astype(np.int32)),
            "w": pa.array(self.w.astype(np.int32)),
            "channel": pa.array(self.channel.astype(np.int32)),
            "vector": pa.FixedSizeListArray.from_arrays(flat, channels),
        })

    @classmethod
    def from_table(cls, table: pa.Table) -> Prototypes:
        table = table.sort_by("prototype_id")
        vector = table["vector"].combine_chunks()
        channels = vector.type.list_size
        flat = vector.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        return cls(
            image_id=table["image_id"].to_numpy().astype(np.int64),
            h=table["h"].to_numpy().astype(np.int64),
            w=table["w"].to_numpy().astype(np.int64),
            channel=table["channel"].to_numpy().astype(np.int64),
            vectors=flat.reshape(-1, channels),
        )


def read_prototypes(uri: str) -> Prototypes:
    return Prototypes.from_table(storage.read_parquet(uri))


def read_source_index(prototypes_uri: str) -> np.ndarray:
    """[M] the source image (row of A) of each prototype, in prototype order."""
    table = storage.read_parquet(prototypes_uri, columns=["prototype_id", "image_id"])
    return table.sort_by("prototype_id")["image_id"].to_numpy()  # type: ignore[no-any-return]


def in_row_order(parts: Iterable[tuple[dict[str, Any], str]], what: str, unit: str = "row",
                 ) -> list[tuple[dict[str, Any], str]]:
    """The ``(meta, uri)`` of a fan-out's parts sorted by their ``start``, checked to tile the
    rows from 0 (each ``start`` is the ``stop`` before it); a gap or an overlap names the part to
    rerun (``what``: the parts' name, e.g. "label parts"; ``unit``: what they cover)."""
    ordered = sorted(parts, key=lambda item: int(item[0]["start"]))
    expected = 0
    for meta, uri in ordered:
        if int(meta["start"]) != expected:
            raise StageError(f"the {what} do not tile the {unit}s: expected one from {unit} "
                             f"{expected}, found one from {meta['start']} ({uri}); rerun the "
                             "missing or repeated task")
        expected = int(meta["stop"])
    return ordered


# -- affinity shards -------------------------------------------------------------------------------

def write_affinity_shard(uri: str, block: np.ndarray, *, start: int, shard_id: int,
                         num_shards: int, dtype: str) -> None:
    """Rows ``start .. start+len(block)-1`` of A, with the meta that places them."""
    storage.write_npy(block, storage.join(uri, "affinity.npy"))
    storage.write_json({"start": start, "stop": start + len(block), "shard_id": shard_id,
                        "num_shards": num_shards, "num_prototypes": int(block.shape[1]),
                        "dtype": dtype}, storage.join(uri, "meta.json"))


@dataclass
class StoredShards:
    """The affinity shards of a run, read one at a time on every pass (a
    :class:`goggles.io.blocks.RowBlocks`); they are the only copy of A and are never
    concatenated."""

    uris: Sequence[str]

    def __post_init__(self) -> None:
        metas = []
        for uri in self.uris:
            meta = storage.read_json(storage.join(uri, "meta.json"))
            metas.append((int(meta["start"]), int(meta["stop"]), int(meta["num_prototypes"]),
                          uri))
        metas.sort()
        expected = 0
        for start, stop, _, uri in metas:
            if start != expected:
                raise ValueError(f"affinity shards do not tile the rows: expected a shard "
                                 f"starting at row {expected}, found one at {start} ({uri}); "
                                 "rerun the missing affinity shard")
            expected = stop
        columns = {m for _, _, m, _ in metas}
        if len(columns) > 1:
            raise ValueError(f"affinity shards disagree on the number of prototypes {columns}; "
                             "rerun the affinity stage")
        self._order = [(start, stop, uri) for start, stop, _, uri in metas]
        self._shape = (expected, columns.pop() if columns else 0)

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        for start, stop, uri in self._order:
            block = storage.read_npy(storage.join(uri, "affinity.npy"))
            if block.shape != (stop - start, self._shape[1]):
                raise ValueError(f"{uri} holds a {block.shape} block, expected "
                                 f"{(stop - start, self._shape[1])}; rerun that shard")
            yield start, block


# -- the fit's sample, part by part --------------------------------------------------------------

_SAMPLE_META, _SAMPLE_ROWS, _SAMPLE_INDEX = "meta.json", "rows.npy", "index.npy"
_SAMPLE_LOGITS = "imagenet-logits.npy"


def write_sample_part(block: np.ndarray, start: int, descriptors: Sequence[np.ndarray],
                      sample_uri: str, part_uri: str,
                      imagenet_logits: np.ndarray | None = None, *,
                      rows: str = "sample.npy") -> int:
    """The rows ``start .. start+len(block)`` of A that are in the sample at ``sample_uri``
    (:func:`goggles.pipeline.fanout.run_plan_sample`; ``rows``: its file of row numbers, e.g.
    ``view.npy``), with their descriptors and ImageNet logits (when the backbone has them), as
    folder ``part_uri``; returns how many."""
    sample = storage.read_npy(storage.join(sample_uri, rows))
    stop = start + block.shape[0]
    local = sample[(sample >= start) & (sample < stop)] - start
    storage.write_npy(np.ascontiguousarray(block[local]), storage.join(part_uri, _SAMPLE_ROWS))
    storage.write_npy((local + start).astype(np.int64), storage.join(part_uri, _SAMPLE_INDEX))
    for i, values in enumerate(descriptors):
        storage.write_npy(np.ascontiguousarray(values[local]),
                          storage.join(part_uri, f"descriptors-{i}.npy"))
    if imagenet_logits is not None:
        storage.write_npy(np.ascontiguousarray(imagenet_logits[local]),
                          storage.join(part_uri, _SAMPLE_LOGITS))
    storage.write_json({"start": start, "stop": stop, "rows": len(local),
                        "columns": int(block.shape[1]), "descriptors": len(descriptors),
                        "imagenet_logits": imagenet_logits is not None},
                       storage.join(part_uri, _SAMPLE_META))
    return len(local)


class SampleParts:
    """The sample's rows of A from the affinity shards' sample parts, in row order (a
    :class:`goggles.io.blocks.RowBlocks`, one part in memory at a time), with ``index`` [S] the
    rows they are among all N and ``descriptors`` (one [S, D] array per network)."""

    def __init__(self, uris: Sequence[str]):
        metas = in_row_order(((storage.read_json(storage.join(uri, _SAMPLE_META)), uri)
                              for uri in uris), "sample's parts")
        if not metas:
            raise StageError("no sample parts to read; pass every affinity shard's sample part")
        self._uris = [uri for _, uri in metas]
        self._meta = metas[0][0]
        self.index = np.concatenate([storage.read_npy(storage.join(uri, _SAMPLE_INDEX))
                                     for uri in self._uris])
        self.descriptors = [self._joined(f"descriptors-{i}.npy")
                            for i in range(int(self._meta["descriptors"]))]
        self._shape = (len(self.index), int(self._meta["columns"]))

    def _joined(self, name: str) -> np.ndarray:
        return np.concatenate([storage.read_npy(storage.join(uri, name)) for uri in self._uris])

    def arrays(self, name: str) -> Any:
        """What an inference method ``reads`` (:class:`goggles.inference.base.Method`) of the
        sample's images: ``descriptors`` or ``imagenet_logits``."""
        if name == "descriptors":
            return self.descriptors
        if name == "imagenet_logits" and self._meta.get("imagenet_logits"):
            return self._joined(_SAMPLE_LOGITS)
        raise ValueError(f"the sample parts hold no {name}; this backbone does not give them "
                         "(choose another method or backbone)")

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        done = 0
        for uri in self._uris:
            block = storage.read_npy(storage.join(uri, _SAMPLE_ROWS))
            if len(block):
                yield done, block
            done += len(block)


# -- labels ----------------------------------------------------------------------------------------

LABELS_SCHEMA = pa.schema([
    ("image_id", pa.int64()), ("uri", pa.string()), ("probs", pa.list_(pa.float64())),
    ("label", pa.int64()), ("label_name", pa.string()), ("confidence", pa.float64()),
])


def labels_table(rows: pa.Table, probs: np.ndarray, names: Sequence[str],
                 confidence: np.ndarray | None = None) -> pa.Table:
    """The labels of the accepted images ``rows`` from their posteriors ``probs`` [N, K] and
    the cluster names [K]: the label is the arg-max; ``confidence`` [N] the method's estimate of
    the chance it is right (default: its probability)."""
    labels = probs.argmax(axis=1)
    if confidence is None:
        confidence = probs.max(axis=1)
    return pa.table({
        "image_id": rows["image_id"], "uri": rows["uri"],
        "probs": pa.array(probs.tolist(), pa.list_(pa.float64())),
        "label": pa.array(labels, pa.int64()),
        "label_name": pa.array([names[k] for k in labels], pa.string()),
        "confidence": pa.array(np.asarray(confidence, dtype=np.float64), pa.float64()),
    }, schema=LABELS_SCHEMA)


# -- model ---------------------------------------------------------------------------------------

MODEL_TENSORS = "model.safetensors"
MODEL_META = "model.json"
MODEL_FORMAT = "goggles-end-model"


def write_model(uri: str, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """A model folder: ``tensors`` as safetensors (``format`` in its header) and ``meta`` as
    ``model.json`` (``format`` and ``goggles_version`` added)."""
    from safetensors.numpy import save

    data = save({name: np.ascontiguousarray(t) for name, t in tensors.items()},
                metadata={"format": MODEL_FORMAT})
    storage.write_bytes(storage.join(uri, MODEL_TENSORS), data)
    storage.write_json({"format": MODEL_FORMAT, "goggles_version": __version__, **meta},
                       storage.join(uri, MODEL_META))


def model_folder(uri: str) -> str:
    """The model folder ``uri`` names: itself when it holds ``model.json``, else a run's output
    folder's ``model/``; raises FileNotFoundError naming both when neither exists."""
    for candidate in (uri, storage.join(uri, "model")):
        if storage.exists(storage.join(candidate, MODEL_META)):
            return candidate
    raise FileNotFoundError(f"no model at {uri}: neither {MODEL_META} nor model/{MODEL_META} "
                            "is there; train one with `goggles run ... --train` or `goggles "
                            "train OUT`")


def read_model(uri: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The tensors and ``model.json`` of the model folder ``uri`` names (:func:`model_folder`)."""
    from safetensors.numpy import load

    folder = model_folder(uri)
    meta = storage.read_json(storage.join(folder, MODEL_META))
    if meta.get("format") != MODEL_FORMAT:
        raise ValueError(f"{folder}/{MODEL_META} is not a goggles end model (format "
                         f"{meta.get('format')!r})")
    return load(storage.read_bytes(storage.join(folder, MODEL_TENSORS))), meta


# -- a run's output folder -------------------------------------------------------------------------

def run_seed(output_uri: str) -> int:
    """The seed a finished run used (its ``metrics.json``); 0 when it records none."""
    metrics = storage.join(output_uri, "metrics.json")
    return int(storage.read_json(metrics).get("seed", 0)) if storage.exists(metrics) else 0


def output_paths(output_uri: str) -> dict[str, str]:
    """Where each artifact of a run lies under its output URI (every runner writes this)."""
    art = storage.join(output_uri, "artifacts")
    return {
        "manifest": storage.join(output_uri, "manifest.parquet"),
        "labels": storage.join(output_uri, "labels.parquet"),
        "metrics": storage.join(output_uri, "metrics.json"),
        "report": storage.join(output_uri, "report.html"),
        "features": storage.join(art, "features"),
        "prototypes": storage.join(art, "prototypes.parquet"),
        "affinity": storage.join(art, "affinity"),
        "inference": storage.join(art, "inference.json"),
        "model": storage.join(output_uri, "model"),
    }
