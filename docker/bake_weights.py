"""Bake every backbone's pretrained weights into an image as ``<backbone>.safetensors``, and
a chosen backbone's (any model spec) from a weights file.

Run at image build time (docker/Dockerfile) with the weight packages importable and no network:

    GOGGLES_OFFLINE=1 python docker/bake_weights.py /opt/goggles/weights \
        [--chosen timm:vit_small_patch14_dinov2 --weights FILE [--weights-sha256 HEX]]

The chosen backbone's file (``make images BACKBONE=... WEIGHTS=...``, staged by build.sh) is read
as ``--weights`` reads it (a state dict or .safetensors, the pin checked), written as
``$GOGGLES_WEIGHTS_DIR/<weights_file_name>`` and checked the same way: resolved from there by
:func:`goggles.features.backbones.load_backbone`, offline, giving the same outputs as the file.
An empty ``--chosen`` bakes none (the Dockerfile passes its build argument as it is).

Each backbone's weights are resolved by :func:`goggles.features.backbones.resolve_weights` (the
same code pods run), written as safetensors (plain tensors: nothing to unpickle at run time),
read back through the ``$GOGGLES_WEIGHTS_DIR`` path the image then sets, and checked to give the
very same filter maps as the weights they came from. The image points ``GOGGLES_WEIGHTS_DIR``
at the folder.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from safetensors.torch import save_file

from goggles import __version__
from goggles.config import ConfigError
from goggles.features import backbones


def bake(name: str, folder: str) -> str:
    """Write ``folder/<name>.safetensors``; returns where the weights came from."""
    state, source = backbones.resolve_weights(name)
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state.items()}
    path = os.path.join(folder, f"{name}.safetensors")
    save_file(tensors, path, metadata={"backbone": name, "source": source,
                                       "goggles_version": __version__})
    os.chmod(path, 0o644)  # read by the image's non-root user
    os.environ[backbones.WEIGHTS_DIR_ENV] = folder
    baked, baked_source = backbones.resolve_weights(name)
    if baked_source != path or baked.keys() != tensors.keys():
        raise SystemExit(f"{name}: {path} is not what resolve_weights finds ({baked_source})")
    del os.environ[backbones.WEIGHTS_DIR_ENV]
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 224, 224, generator=generator)
    original, _ = backbones.load_backbone(name)
    from_file, _ = backbones.load_backbone(name, weights_uri=path)
    with torch.inference_mode():
        if not torch.equal(original(images), from_file(images)):
            raise SystemExit(f"{name}: filter maps from {path} differ from those of {source}")
    megabytes = os.path.getsize(path) / 2**20
    print(f"{name}: {len(tensors)} tensors, {megabytes:.1f} MiB from {source} -> {path}")
    return source


def _outputs(model: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    with torch.inference_mode():
        out = model(images)
    return list(out) if isinstance(out, tuple) else [out]


def bake_chosen(name: str, weights: str, sha256: str, folder: str) -> str:
    """Write ``folder/<weights_file_name(name)>`` from the weights file ``weights`` (pinned to
    ``sha256`` when given) and check that the runtime resolves it, offline, to the same outputs
    as the file itself; returns the path."""
    from goggles.features.network import read_state

    backbones.check_available(name)  # the family's library must be in the image
    state = read_state(weights, sha256)
    tensors = {key: value.detach().to("cpu").contiguous().clone() for key, value in state.items()}
    path = os.path.join(folder, backbones.weights_file_name(name))
    save_file(tensors, path, metadata={"backbone": name, "source": os.path.basename(weights),
                                       "sha256": sha256, "goggles_version": __version__})
    os.chmod(path, 0o644)  # read by the image's non-root user
    os.environ[backbones.WEIGHTS_DIR_ENV] = folder
    try:
        baked, source = backbones.load_backbone(name)
    finally:
        del os.environ[backbones.WEIGHTS_DIR_ENV]
    if source != path:
        raise SystemExit(f"{name}: the runtime resolves its weights to {source}, not {path}")
    from_file, _ = backbones.load_backbone(name, weights_uri=weights, weights_sha256=sha256)
    side = backbones.preprocessing_of(baked, 224).image_size
    images = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    for ours, theirs in zip(_outputs(baked, images), _outputs(from_file, images), strict=True):
        if not torch.equal(ours, theirs):
            raise SystemExit(f"{name}: outputs from {path} differ from those of {weights}")
    megabytes = os.path.getsize(path) / 2**20
    print(f"{name}: {len(tensors)} tensors, {megabytes:.1f} MiB from {weights} -> {path}")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="where to write <backbone>.safetensors")
    parser.add_argument("--backbone", action="append", choices=sorted(backbones.SPECS),
                        help="bake only these (default: every backbone)")
    parser.add_argument("--chosen", default="", metavar="BACKBONE",
                        help="also bake this backbone (any model spec) from --weights")
    parser.add_argument("--weights", default="", help="the chosen backbone's weights file")
    parser.add_argument("--weights-sha256", default="", help="its pinned SHA-256 (hex)")
    args = parser.parse_args(argv)
    if bool(args.chosen) != bool(args.weights):
        parser.error("--chosen and --weights go together: the backbone and its weights file")
    if os.environ.get("GOGGLES_OFFLINE") != "1":
        print("note: GOGGLES_OFFLINE is not 1; weights may be downloaded", file=sys.stderr)
    os.environ.pop(backbones.WEIGHTS_DIR_ENV, None)  # bake from the real sources
    os.makedirs(args.folder, exist_ok=True)
    for name in args.backbone or sorted(backbones.SPECS):
        if name != args.chosen:
            bake(name, args.folder)
    if args.chosen:
        try:
            bake_chosen(args.chosen, args.weights, args.weights_sha256, args.folder)
        except ConfigError as error:  # a wrong pin, a missing library: one line
            raise SystemExit(f"bake_weights.py: {args.chosen}: {error}") from None


if __name__ == "__main__":
    main()
