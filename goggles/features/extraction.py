"""Filter-map extraction (paper §3.1).

``extract_filter_maps`` runs the backbone over the accepted images of a manifest in batches
(decoding in DataLoader workers, on GPU when present) and hands each batch of [n, C, H, W]
filter maps to a callback; :mod:`goggles.features.prototypes` picks each image's prototypes
from them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from goggles.features.backbones import IMAGENET_MEAN, IMAGENET_STD, preprocessing_of
from goggles.features.device import autocast_dtype, cpu_threads, extract_batch_size, resolve_device
from goggles.features.network import Preprocessing
from goggles.io import storage
from goggles.io.images import ImageRejected, changed_since_ingest, decode_image
from goggles.io.progress import Progress

logger = logging.getLogger(__name__)


_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32)


def preprocess(image, image_size: int,  # type: ignore[no-untyped-def]
               preprocessing: Preprocessing | None = None) -> torch.Tensor:
    """Resize to ``image_size`` x ``image_size`` (bilinear, antialiased), scale to [0, 1] and
    normalise with the ImageNet mean/std, as the paper's code does; with ``preprocessing`` (a
    family's own), its size, interpolation, mean and std instead. Returns [3, S, S] float32.

    Plain numpy in float32: the same IEEE operations as torch's, without torch's per-call thread
    start-up (33 ms → 3 ms per image outside DataLoader workers)."""
    from PIL import Image

    mean, std, resample = _MEAN, _STD, Image.Resampling.BILINEAR
    if preprocessing is not None:
        image_size = preprocessing.image_size
        mean = np.asarray(preprocessing.mean, dtype=np.float32)
        std = np.asarray(preprocessing.std, dtype=np.float32)
        resample = Image.Resampling[preprocessing.interpolation.upper()]
    resized = image.resize((image_size, image_size), resample)
    array = np.asarray(resized, dtype=np.float32) / np.float32(255.0)
    array = (array - mean) / std
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


class ImageDataset(Dataset):  # type: ignore[type-arg]
    """Decodes and preprocesses the images at ``uris``; item ``i`` is ([3, S, S], i, changed).

    With ``hashes`` (the manifest's sha256 of each image), the bytes read are checked against
    it before they are decoded (:func:`goggles.io.images.changed_since_ingest`); an image
    rewritten since ingest is not decoded: its item is zeros with ``changed`` True. A model's
    own ``preprocessing`` (a family's) sets the size, mean, std and interpolation."""

    def __init__(self, uris: Sequence[str], image_size: int, max_pixels: int = 64_000_000,
                 hashes: Sequence[str | None] | None = None,
                 preprocessing: Preprocessing | None = None):
        self.uris = list(uris)
        self.image_size = image_size if preprocessing is None else preprocessing.image_size
        self.max_pixels = max_pixels
        self.hashes = list(hashes) if hashes is not None else [None] * len(self.uris)
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.uris)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, bool]:
        uri = self.uris[index]
        try:
            data = storage.read_bytes(uri)
            if changed_since_ingest(data, self.hashes[index]):
                side = self.image_size
                return torch.zeros(3, side, side), index, True
            image = decode_image(data, max_pixels=self.max_pixels)
        except (ImageRejected, storage.StorageError) as error:
            raise RuntimeError(f"{uri} was accepted at ingest but cannot be read now ({error}); "
                               "rerun ingest so the manifest matches the source") from error
        return preprocess(image, self.image_size, self.preprocessing), index, False


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
    hashes: Sequence[str | None] | None = None,
    changed: list[int] | None = None,
    on_embedding: Callable[[int, np.ndarray], None] | None = None,
    desc: str = "extract",
) -> None:
    """Run ``model`` over the images at ``uris`` in order (``desc`` names its progress).

    ``on_batch(start, maps)`` receives consecutive batches: ``maps`` is [n, C, H, W] float32 for
    images ``start .. start+n-1``. A model with a pooled view (it returns ``(maps, embedding)``)
    also hands each batch's [n, D] float32 embeddings to ``on_embedding``, right after its maps.
    A model with its own ``preprocessing`` (a family's) is fed by it; ``image_size`` is then
    ignored.

    With ``hashes`` (the manifest's sha256 of each image) every image's bytes are checked as
    they are read; the positions of those that changed since ingest are appended to
    ``changed`` before their batch reaches ``on_batch`` (their maps are of a blank image and
    must not be kept).

    Decoding runs in DataLoader workers, overlapped with the forward pass. On a GPU the batches
    travel through pinned memory, the forward runs under autocast (``precision``: see
    :func:`goggles.features.device.autocast_dtype`), the batch size is lowered if its
    activations would not fit the free memory, and the device-to-host copy of batch i overlaps
    the forward of batch i+1 (``on_batch`` runs one batch behind the GPU).
    """
    device = resolve_device(device or "cpu")
    cuda = device.type == "cuda"
    own = getattr(model, "preprocessing", None)
    image_size = preprocessing_of(model, image_size).image_size
    model = prepare_model(model, device)
    dtype = autocast_dtype(device, precision)
    if cuda:
        torch.backends.cudnn.benchmark = True
        batch_size = extract_batch_size(
            device, batch_size,
            bytes_per_image=activation_bytes_per_image(model, image_size, device, dtype))
    workers = default_workers(num_workers)
    loader = DataLoader(
        ImageDataset(uris, image_size, hashes=hashes, preprocessing=own), batch_size=batch_size,
        shuffle=False,
        num_workers=workers, pin_memory=cuda,
        persistent_workers=False, prefetch_factor=4 if workers else None)
    memory_format = torch.channels_last if use_channels_last(device) else torch.preserve_format
    pending: tuple[int, list[torch.Tensor], torch.cuda.Event | None] | None = None

    def deliver(item: tuple[int, list[torch.Tensor], torch.cuda.Event | None]) -> None:
        first, hosts, ready = item
        if ready is not None:
            ready.synchronize()  # the pinned buffers go back to their cache: copies
        arrays = [host.numpy().copy() if ready is not None else host.numpy() for host in hosts]
        on_batch(first, arrays[0])
        if len(arrays) > 1 and on_embedding is not None:
            on_embedding(first, arrays[1])

    start = 0
    with Progress(len(uris), desc, "images") as bar:
        for images, indices, rewritten in loader:
            if changed is not None and bool(rewritten.any()):
                changed.extend(int(i) for i in indices[rewritten])
            images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            with _autocast(device, dtype):
                out = model(images)
            outputs = [part.float().contiguous()
                       for part in (out if isinstance(out, tuple) else (out,))]
            ready = None
            hosts = outputs
            if cuda:
                hosts = [torch.empty(part.shape, dtype=torch.float32, pin_memory=True)
                         for part in outputs]
                for host, part in zip(hosts, outputs, strict=True):
                    host.copy_(part, non_blocking=True)
                ready = torch.cuda.Event()
                ready.record()
            if pending is not None:
                deliver(pending)
            pending = (start, hosts, ready)
            start += images.shape[0]
            bar.update(images.shape[0])
    if pending is not None:
        deliver(pending)
