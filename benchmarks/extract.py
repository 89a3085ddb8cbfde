"""End-to-end extraction against the bare backbone forward on pre-decoded tensors.

    python benchmarks/extract.py [--images 64] [--batch-size 32] [--repeats 3]
                                 [--backbone vgg16] [--device auto] [--layouts]

On the first ``--images`` cub-dev images (real JPEGs, read in place), interleaved ``--repeats``
times:

* the floor: the backbone's forward pass over the same images already decoded, resized and
  normalised into one tensor, in batches of ``--batch-size``, prepared as the library prepares
  it (eval, inference mode, the device's memory format and autocast);
* the stage: ``extract_filter_maps`` from the files (reading, decoding and preprocessing in
  DataLoader workers, the forward, the device-to-host copy) with the extract stage's callback
  (prototype selection, keeping the maps).

Prints images/s of each (fastest repeat, and median), their ratio (target >= 0.85), and the
decoding cost per image. ``--layouts`` also times the bare forward in channels-last on this
device, the measurement behind :func:`goggles.features.use_channels_last`.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cub import require_cub  # noqa: E402
from benchmarks.timing import best, interleaved, machine, spread  # noqa: E402
from goggles.features.backbones import load_backbone  # noqa: E402
from goggles.features.device import autocast_dtype, resolve_device  # noqa: E402
from goggles.features.extraction import (  # noqa: E402
    ImageDataset,
    default_workers,
    extract_filter_maps,
    prepare_model,
    use_channels_last,
)
from goggles.features.prototypes import select_prototypes  # noqa: E402


def first_uris(count: int) -> list[str]:
    uris: list[str] = []
    for folder in sorted(p for p in require_cub().iterdir() if p.is_dir()):
        uris += [str(f) for f in sorted(folder.iterdir())]
        if len(uris) >= count:
            break
    return uris[:count]


def bare_forward(model: torch.nn.Module, images: torch.Tensor, batch_size: int,
                 device: torch.device, channels_last: bool) -> None:
    """The forward alone over pre-decoded images already on ``device``."""
    dtype = autocast_dtype(device)
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            if dtype is None:
                model(batch)
            else:
                with torch.autocast(device.type, dtype=dtype):
                    model(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--layouts", action="store_true",
                        help="also time the bare forward in channels-last")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.simplefilter("ignore")
    device = resolve_device(args.device)
    uris = first_uris(args.images)
    model, source = load_backbone(args.backbone)
    model = prepare_model(model, device)
    dataset = ImageDataset(uris, 224)
    start = time.perf_counter()
    images = torch.stack([dataset[i][0] for i in range(len(uris))]).to(device)
    decode_ms = (time.perf_counter() - start) / len(uris) * 1e3
    print(f"machine: {machine()}; device {device}")
    print(f"{args.backbone} ({source}), {len(uris)} cub-dev images, batch {args.batch_size}, "
          f"{default_workers(-1)} decoding worker(s), autocast {autocast_dtype(device)}, "
          f"channels-last {use_channels_last(device)}; reading + decoding + preprocessing "
          f"{decode_ms:.1f} ms/image on one core")

    def stage() -> None:
        kept: list[np.ndarray] = []

        def on_batch(first: int, maps: np.ndarray) -> None:
            select_prototypes(maps, np.arange(first, first + len(maps)), 5)
            kept.append(maps)

        extract_filter_maps(uris, model, batch_size=args.batch_size, device=device,
                            on_batch=on_batch)

    functions = {
        "bare forward": lambda: bare_forward(model, images, args.batch_size, device,
                                             use_channels_last(device)),
        "extract_filter_maps": stage,
    }
    if args.layouts:
        other = not use_channels_last(device)
        twin = copy.deepcopy(model).to(
            memory_format=torch.channels_last if other else torch.contiguous_format)
        functions[f"bare forward, channels-last {other}"] = lambda: bare_forward(
            twin, images, args.batch_size, device, other)
    times = interleaved(functions, args.repeats)
    print(f"images/s, fastest / median of {args.repeats} (seconds in brackets):")
    for name, samples in times.items():
        print(f"  {name:<34} {len(uris) / best(samples):7.2f} / "
              f"{len(uris) / float(np.median(samples)):7.2f}   [{spread(samples)}]")
    ratio = best(times["bare forward"]) / best(times["extract_filter_maps"])
    print(f"end-to-end / bare forward = {ratio:.3f}  [target >= 0.85: "
          f"{'met' if ratio >= 0.85 else 'NOT met'}]")
    return 0 if ratio >= 0.85 else 1


if __name__ == "__main__":
    sys.exit(main())
