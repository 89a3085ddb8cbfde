"""Filter-map extraction and prototype selection (paper §3.1).

``extract_filter_maps`` runs the backbone over the accepted images of a manifest in batches
(decoding in DataLoader workers, on GPU when present) and hands each batch of [n, C, H, W]
filter maps to a callback. ``select_prototypes`` picks each image's prototypes: the ``top_k``
channels with the highest global max, the C-vector at each channel's argmax position, duplicate
positions dropped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from goggles import storage
from goggles.backbones import IMAGENET_MEAN, IMAGENET_STD
from goggles.ingest import ImageRejected, decode_image

logger = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but no CUDA device is visible; "
                           "use device='auto' or 'cpu'")
    return torch.device(device)


def preprocess(image, image_size: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Resize to ``image_size`` x ``image_size`` (bilinear, antialiased), scale to [0, 1] and
    normalise with the ImageNet mean/std, as the paper's code does. Returns [3, S, S] float32."""
    from PIL import Image

    resized = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    array = np.asarray(resized, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (tensor - mean) / std


class ImageDataset(Dataset):  # type: ignore[type-arg]
    """Decodes and preprocesses the images at ``uris``; item ``i`` is ([3, S, S], i)."""

    def __init__(self, uris: Sequence[str], image_size: int, max_pixels: int = 64_000_000):
        self.uris = list(uris)
        self.image_size = image_size
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.uris)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        uri = self.uris[index]
        try:
            image = decode_image(storage.read_bytes(uri), max_pixels=self.max_pixels)
        except (ImageRejected, storage.StorageError) as error:
            raise RuntimeError(f"{uri} was accepted at ingest but cannot be read now ({error}); "
                               "rerun ingest so the manifest matches the source") from error
        return preprocess(image, self.image_size), index


def default_workers(requested: int) -> int:
    if requested >= 0:
        return requested
    cores = os.cpu_count() or 1
    return max(0, min(4, cores - 1))


@torch.inference_mode()
def extract_filter_maps(
    uris: Sequence[str],
    model: torch.nn.Module,
    *,
    image_size: int = 224,
    batch_size: int = 32,
    num_workers: int = -1,
    device: torch.device | None = None,
    on_batch: Callable[[int, np.ndarray], None],
) -> None:
    """Run ``model`` over the images at ``uris`` in order.

    ``on_batch(start, maps)`` receives consecutive batches: ``maps`` is [n, C, H, W] float32 for
    images ``start .. start+n-1``.
    """
    device = device or torch.device("cpu")
    model = model.to(device)
    workers = default_workers(num_workers)
    loader = DataLoader(
        ImageDataset(uris, image_size), batch_size=batch_size, shuffle=False,
        num_workers=workers, pin_memory=device.type == "cuda",
        persistent_workers=False, prefetch_factor=4 if workers else None)
    autocast = torch.autocast(device_type="cuda", dtype=torch.float16,
                              enabled=device.type == "cuda")
    start = 0
    with tqdm(total=len(uris), desc="extract", unit="img", disable=None) as bar:
        for images, _ in loader:
            images = images.to(device, non_blocking=True)
            with autocast:
                maps = model(images)
            on_batch(start, maps.float().cpu().numpy())
            start += images.shape[0]
            bar.update(images.shape[0])


PROTOTYPE_COLUMNS = ("prototype_id", "image_id", "h", "w", "channel", "vector")


@dataclass
class Prototypes:
    """Prototypes of a set of images: ``vectors`` is [M, C] float32, the rest [M] int arrays."""

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


def select_prototypes(maps: np.ndarray, image_ids: np.ndarray, top_k: int) -> Prototypes:
    """Pick prototypes from a batch of filter maps (paper §3.1, eq. 2).

    Parameters
    ----------
    maps : [n, C, H, W] float array of filter maps.
    image_ids : [n] ids of those images.
    top_k : channels per image ranked by global max pooling (ties broken by channel index).

    Returns
    -------
    Prototypes with at most ``top_k`` per image: for each top channel, the C-vector at the
    position of its maximum (first position on ties); repeated positions are kept once, in
    channel rank order. Positions whose vector is all zero are dropped (they have no direction,
    so their cosine affinity is undefined).
    """
    n, channels, height, width = maps.shape
    top_k = min(top_k, channels)
    flat = maps.reshape(n, channels, height * width)
    positions = flat.argmax(axis=2)  # [n, C], first max on ties
    peaks = np.take_along_axis(flat, positions[:, :, None], axis=2)[:, :, 0]  # [n, C]
    # stable descending sort: highest peak first, lower channel index first on ties
    order = np.argsort(-peaks, axis=1, kind="stable")[:, :top_k]  # [n, k]
    chosen = np.take_along_axis(positions, order, axis=1)  # [n, k]
    rows, hs, ws, chans = [], [], [], []
    for row in range(n):
        seen: set[int] = set()
        for rank in range(top_k):
            position = int(chosen[row, rank])
            if position in seen:
                continue
            seen.add(position)
            rows.append(row)
            hs.append(position // width)
            ws.append(position % width)
            chans.append(int(order[row, rank]))
    rows_a = np.asarray(rows, dtype=np.int64)
    hs_a = np.asarray(hs, dtype=np.int64)
    ws_a = np.asarray(ws, dtype=np.int64)
    vectors = maps[rows_a, :, hs_a, ws_a].astype(np.float32) if len(rows_a) else \
        np.zeros((0, channels), np.float32)
    keep = np.linalg.norm(vectors, axis=1) > 0 if len(rows_a) else np.zeros(0, bool)
    return Prototypes(
        image_id=np.asarray(image_ids, dtype=np.int64)[rows_a][keep],
        h=hs_a[keep], w=ws_a[keep],
        channel=np.asarray(chans, dtype=np.int64)[keep],
        vectors=vectors[keep],
    )
