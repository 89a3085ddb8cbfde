"""Bake every backbone's pretrained weights into an image as ``<backbone>.safetensors``.

Run at image build time (docker/Dockerfile) with the weight packages importable and no network:

    GOGGLES_OFFLINE=1 python docker/bake_weights.py /opt/goggles/weights

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="where to write <backbone>.safetensors")
    parser.add_argument("--backbone", action="append", choices=sorted(backbones.SPECS),
                        help="bake only these (default: every backbone)")
    args = parser.parse_args(argv)
    if os.environ.get("GOGGLES_OFFLINE") != "1":
        print("note: GOGGLES_OFFLINE is not 1; weights may be downloaded", file=sys.stderr)
    os.environ.pop(backbones.WEIGHTS_DIR_ENV, None)  # bake from the real sources
    os.makedirs(args.folder, exist_ok=True)
    for name in args.backbone or sorted(backbones.SPECS):
        bake(name, args.folder)


if __name__ == "__main__":
    main()
