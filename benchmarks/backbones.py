"""The extract stage against the bare forward of the same networks, for a model spec and for
today's default.

    python benchmarks/backbones.py [--images 180] [--repeats 2] [--cases vit,default]
                                   [--device auto] [--vit timm:vit_small_patch16_224]

Cases, on the first ``--images`` cub-dev images (real JPEGs, read in place):

* ``vit``: a ViT-S-sized transformer (``--vit``, random initialisation from a checkpoint this
  script writes: no hub is reachable here; speed does not depend on the weights) as the
  backbone, no second network: patch-token maps, prototypes, bilinear descriptors and the pooled
  view;
* ``default``: today's default, VGG-16 maps and MobileNetV2 descriptors.

For each case, interleaved ``--repeats`` times (the machine is shared: reference and candidate
are measured in the same run):

* the reference: the bare forward of every network of the case over the same images already
  decoded, resized and normalised into one tensor (each network's own preprocessing), in
  batches of the stage's size, prepared as the library prepares it (eval, inference mode, the
  device's memory format and autocast: bfloat16 on a GPU, float32 on a CPU);
* the candidate: the extract stage, :func:`goggles.pipeline.extract.run_extract_part`, from
  the manifest (reading and decoding the files, every forward, prototypes, descriptors, the
  writes), less the one-off loading of the networks' weights, timed apart in the same round.

Prints images/s of each (fastest repeat and median), the load, and the ratio candidate /
reference (target >= 0.85). On a CPU shared with other work the wall times swing with their
load, so each line also gives the CPU seconds of the fastest repeat (this process and its
decoding workers, which have ended by then) and the ratio of those: the same comparison, less
exposed to what else runs.
"""

from __future__ import annotations

import argparse
import io
import logging
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.extract import bare_forward, first_uris  # noqa: E402
from benchmarks.timing import best, interleaved, machine, spread  # noqa: E402
from goggles.features.backbones import load_backbone, preprocessing_of  # noqa: E402
from goggles.features.config import ExtractConfig  # noqa: E402
from goggles.features.device import autocast_dtype, resolve_device  # noqa: E402
from goggles.features.extraction import (  # noqa: E402
    ImageDataset,
    prepare_model,
    use_channels_last,
)
from goggles.ingest.config import IngestConfig  # noqa: E402
from goggles.pipeline.extract import run_extract_part  # noqa: E402
from goggles.pipeline.stages import run_ingest  # noqa: E402


def source_of(uris: list[str], root: Path) -> Path:
    """A folder of links to ``uris`` (one class folder per species, as cub-dev)."""
    for uri in uris:
        path = Path(uri)
        link = root / "images" / path.parent.name / path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(path)
    return root / "images"


def vit_checkpoint(spec: str, root: Path) -> str:
    import timm

    path = root / "vit.pth"
    buffer = io.BytesIO()
    torch.save(timm.create_model(spec.split(":", 1)[1]).state_dict(), buffer)
    path.write_bytes(buffer.getvalue())
    return str(path)


def cpu_seconds() -> float:
    """CPU seconds so far of this process and its ended children (the decoding workers)."""
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                         resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def with_cpu(function: Any, spent: list[float]) -> Any:
    """``function``, appending the CPU seconds of each call to ``spent``."""
    def timed() -> None:
        start = cpu_seconds()
        function()
        spent.append(cpu_seconds() - start)
    return timed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=180)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cases", default="vit,default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--vit", default="timm:vit_small_patch16_224")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.simplefilter("ignore")
    device = resolve_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="goggles-backbones-"))
    uris = first_uris(args.images)
    manifest = str(work / "manifest.parquet")
    run_ingest(IngestConfig(follow_symlinks=True), str(source_of(uris, work)), manifest)
    print(f"machine: {machine()}; device {device}; autocast {autocast_dtype(device)}; "
          f"channels-last {use_channels_last(device)}; {len(uris)} cub-dev images")
    cases: dict[str, dict[str, Any]] = {}
    if "vit" in args.cases.split(","):
        cases["vit"] = {"backbone": args.vit, "weights_uri": vit_checkpoint(args.vit, work),
                        "descriptor_backbone": "none"}
    if "default" in args.cases.split(","):
        cases["default"] = {"backbone": "vgg16", "weights_uri": "",
                            "descriptor_backbone": "mobilenet_v2"}
    failed = False
    for case, values in cases.items():
        config = ExtractConfig(device=str(device), **values)
        networks = [(config.backbone, config.weights_uri)]
        if config.descriptor_backbone != "none":
            networks.append((config.descriptor_backbone, ""))
        models, tensors = [], []
        for name, weights in networks:
            model, _ = load_backbone(name, weights)
            dataset = ImageDataset(uris, config.image_size,
                                   preprocessing=getattr(model, "preprocessing", None))
            tensors.append(torch.stack([dataset[i][0] for i in range(len(uris))]).to(device))
            models.append(prepare_model(model, device))
            print(f"{case}: {name}, {preprocessing_of(model, config.image_size)}")
        rounds = {"count": 0}

        def reference(models: list[Any] = models, tensors: list[Any] = tensors,
                      config: ExtractConfig = config) -> None:
            for model, images in zip(models, tensors, strict=True):
                bare_forward(model, images, config.batch_size, device,
                             use_channels_last(device))

        def load(networks: list[tuple[str, str]] = networks) -> None:
            for name, weights in networks:
                load_backbone(name, weights)

        def stage(config: ExtractConfig = config, case: str = case,
                  rounds: dict[str, int] = rounds) -> None:
            rounds["count"] += 1
            out = work / f"{case}-{rounds['count']}"
            run_extract_part(config, manifest, 0, 1, str(out / "maps"), str(out / "summary"))

        functions = {"bare forward": reference, "load weights": load, "extract stage": stage}
        cpu: dict[str, list[float]] = {name: [] for name in functions}
        times = interleaved({name: with_cpu(function, cpu[name])
                             for name, function in functions.items()}, args.repeats)
        cpu = {name: spent[-args.repeats:] for name, spent in cpu.items()}  # not the warm-up
        loaded = best(times["load weights"])
        print(f"{case}: images/s, fastest / median of {args.repeats} (seconds in brackets; "
              "CPU seconds of the fastest):")
        for name, samples in times.items():
            fastest_cpu = cpu[name][int(np.argmin(samples))]
            if name == "load weights":
                print(f"  {name:<34} {loaded:7.2f} s   [{spread(samples)}]  "
                      f"CPU {fastest_cpu:.1f} s")
                continue
            net = [s - loaded if name == "extract stage" else s for s in samples]
            print(f"  {name:<34} {len(uris) / min(net):7.2f} / "
                  f"{len(uris) / float(np.median(net)):7.2f}   [{spread(samples)}]  "
                  f"CPU {fastest_cpu:.1f} s")
        ratio = best(times["bare forward"]) / (best(times["extract stage"]) - loaded)
        with_load = best(times["bare forward"]) / best(times["extract stage"])
        cpu_ratio = min(cpu["bare forward"]) / (min(cpu["extract stage"]) -
                                                min(cpu["load weights"]))
        print(f"{case}: extract stage / bare forward = {ratio:.3f} (with the load "
              f"{with_load:.3f}; in CPU seconds {cpu_ratio:.3f})  "
              f"[target >= 0.85: {'met' if ratio >= 0.85 else 'NOT met'}]")
        failed |= ratio < 0.85
        del models, tensors
    return 1 if failed else 0


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    logging.getLogger(__name__).info("%.0f s", time.perf_counter() - started)
    sys.exit(code)
