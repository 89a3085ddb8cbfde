"""Filter-map extraction and prototype selection (paper §3.1).

``extract_filter_maps`` runs the backbone over the accepted images of a manifest in batches
(decoding in DataLoader workers, on GPU when present) and hands each batch of [n, C, H, W]
filter maps to a callback. ``select_prototypes`` picks each image's prototypes: the ``top_k``
channels with the highest global max, the C-vector at each channel's argmax position, duplicate
positions dropped.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from goggles import storage
from goggles.backbones import IMAGENET_MEAN, IMAGENET_STD
from goggles.device import (  # noqa: F401 - resolve_device is part of this module's API
    autocast_dtype,
    cpu_threads,
    extract_batch_size,
    resolve_device,
)
from goggles.ingest import ImageRejected, decode_image

logger = logging.getLogger(__name__)


_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32)


def preprocess(image, image_size: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Resize to ``image_size`` x ``image_size`` (bilinear, antialiased), scale to [0, 1] and
    normalise with the ImageNet mean/std, as the paper's code does. Returns [3, S, S] float32.

    Plain numpy in float32: the same IEEE operations as torch's, without torch's per-call thread
    start-up (33 ms → 3 ms per image outside DataLoader workers)."""
    from PIL import Image

    resized = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    array = np.asarray(resized, dtype=np.float32) / np.float32(255.0)
    array = (array - _MEAN) / _STD
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


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
    """Decoding workers: ``requested``, or for -1 one per core beside the one that feeds the
    model, at most 4 (decoding a 227x227 JPEG costs ~4 ms against ~250 ms of VGG-16 on a CPU
    core, so more workers only take cores from the forward pass)."""
    if requested >= 0:
        return requested
    return max(0, min(4, cpu_threads() - 1))


def _autocast(device: torch.device,
              dtype: torch.dtype | None) -> contextlib.AbstractContextManager[object]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def use_channels_last(device: torch.device) -> bool:
    """NHWC activations: cuDNN's tensor-core convolutions want them on GPUs, and on this CPU
    (oneDNN, AVX-512) they measured 10-15% faster for VGG-16 and ~1.5x for MobileNetV2 than NCHW
    (``benchmarks/extract.py --layouts``); the maps differ from NCHW's by ~2e-6 relative."""
    return device.type in ("cuda", "cpu")


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in eval mode on ``device``, in the memory format that device prefers."""
    model = model.eval().to(device)
    if use_channels_last(device):
        model = model.to(memory_format=torch.channels_last)
    return model


def activation_bytes_per_image(model: torch.nn.Module, image_size: int, device: torch.device,
                               dtype: torch.dtype | None) -> int:
    """Peak device memory one image's forward pass needs (measured on a batch of two, CUDA only;
    0 on CPU, where the batch size is not memory-bound)."""
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    probe = torch.zeros(2, 3, image_size, image_size, device=device)
    if use_channels_last(device):
        probe = probe.contiguous(memory_format=torch.channels_last)
    with _autocast(device, dtype):
        model(probe)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    return max(1, int(peak * 1.5) // 2)  # 1.5: room for the allocator's rounding


@torch.inference_mode()
def extract_filter_maps(
    uris: Sequence[str],
    model: torch.nn.Module,
    *,
    image_size: int = 224,
    batch_size: int = 32,
    num_workers: int = -1,
    device: torch.device | str | None = None,
    precision: str = "auto",
    on_batch: Callable[[int, np.ndarray], None],
) -> None:
    """Run ``model`` over the images at ``uris`` in order.

    ``on_batch(start, maps)`` receives consecutive batches: ``maps`` is [n, C, H, W] float32 for
    images ``start .. start+n-1``.

    Decoding runs in DataLoader workers, overlapped with the forward pass. On a GPU the batches
    travel through pinned memory, the forward runs under autocast (``precision``: see
    :func:`goggles.device.autocast_dtype`), the batch size is lowered if its activations would
    not fit the free memory, and the device-to-host copy of batch i overlaps the forward of
    batch i+1 (``on_batch`` runs one batch behind the GPU).
    """
    device = resolve_device(device or "cpu")
    cuda = device.type == "cuda"
    model = prepare_model(model, device)
    dtype = autocast_dtype(device, precision)
    if cuda:
        torch.backends.cudnn.benchmark = True
        batch_size = extract_batch_size(
            device, batch_size,
            bytes_per_image=activation_bytes_per_image(model, image_size, device, dtype))
    workers = default_workers(num_workers)
    loader = DataLoader(
        ImageDataset(uris, image_size), batch_size=batch_size, shuffle=False,
        num_workers=workers, pin_memory=cuda,
        persistent_workers=False, prefetch_factor=4 if workers else None)
    memory_format = torch.channels_last if use_channels_last(device) else torch.preserve_format
    pending: tuple[int, torch.Tensor, torch.cuda.Event | None] | None = None

    def deliver(item: tuple[int, torch.Tensor, torch.cuda.Event | None]) -> None:
        first, host, ready = item
        if ready is not None:
            ready.synchronize()
            on_batch(first, host.numpy().copy())  # the pinned buffer goes back to its cache
        else:
            on_batch(first, host.numpy())

    start = 0
    with tqdm(total=len(uris), desc="extract", unit="img", disable=None) as bar:
        for images, _ in loader:
            images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            with _autocast(device, dtype):
                maps = model(images)
            maps = maps.float().contiguous()
            ready = None
            if cuda:
                host = torch.empty(maps.shape, dtype=torch.float32, pin_memory=True)
                host.copy_(maps, non_blocking=True)
                ready = torch.cuda.Event()
                ready.record()
            else:
                host = maps
            if pending is not None:
                deliver(pending)
            pending = (start, host, ready)
            start += images.shape[0]
            bar.update(images.shape[0])
    if pending is not None:
        deliver(pending)


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
