"""``torchvision:<arch>``: any torchvision classification model (``torchvision:resnet50``,
``torchvision:convnext_tiny``, ``torchvision:vit_b_16``).

A CNN is cut before its global pooling (its ``features`` where it has them, else every child
before ``avgpool``); a vision transformer's encoder output gives the patch-token map and its
class token the pooled view. Preprocessing is the default weights' (crop size as the square
side, mean, std, interpolation); weights come from torch's hub cache or torchvision's download.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from goggles.features.network import (
    FeatureNet,
    Preprocessing,
    WeightsNotFound,
    frozen,
    interpolation_name,
    load_state,
    offline_message,
    tokens_to_maps,
)

logger = logging.getLogger(__name__)

LIBRARY = "torchvision"
EXTRA = ""
CACHE = "torch's hub cache ($TORCH_HOME/hub/checkpoints)"


def _vit_features(model: Any, x: torch.Tensor) -> Any:
    tokens = model._process_input(x)
    tokens = torch.cat([model.class_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
    tokens = model.encoder(tokens)
    return tokens_to_maps(tokens, 1), tokens[:, 0]


def _cnn_features(trunk: Any, x: torch.Tensor) -> Any:
    return trunk(x)


def _trunk(model: nn.Module) -> nn.Module:
    if hasattr(model, "features") and isinstance(model.features, nn.Module):
        return model.features
    children = []
    for child_name, child in model.named_children():
        if child_name in ("avgpool", "fc", "classifier", "head"):
            break
        children.append(child)
    return nn.Sequential(*children)


def preprocessing(weights: Any) -> Preprocessing:
    transforms = weights.transforms() if weights is not None else None
    if transforms is None:
        return Preprocessing(224)
    side = transforms.crop_size[0]
    return Preprocessing(int(side), tuple(transforms.mean), tuple(transforms.std),
                         interpolation_name(transforms.interpolation))


def load(arch: str, tag: str, name: str, state: dict[str, torch.Tensor] | None,
         where: str) -> tuple[FeatureNet, str]:
    from torchvision import models

    try:
        default = models.get_model_weights(arch).DEFAULT  # type: ignore[attr-defined]
    except ValueError:
        default = None
    model = models.get_model(arch, weights=None)
    if state is not None:
        load_state(model, state, name, where)
        source = where
    elif default is None:
        raise WeightsNotFound(f"torchvision has no pretrained weights for {arch!r}; pass "
                              "--weights URI")
    else:
        try:
            model.load_state_dict(default.get_state_dict(progress=False, check_hash=True))
        except Exception as error:  # noqa: BLE001 - offline and uncached lands here
            logger.debug("torchvision could not load %s: %s", arch, error)
            raise WeightsNotFound(offline_message(name, CACHE)) from None
        source = default.url
    pre = preprocessing(default)
    if isinstance(model, models.VisionTransformer):
        return FeatureNet(frozen(model), _vit_features, pre, True), source
    return FeatureNet(frozen(_trunk(model)), _cnn_features, pre, False), source
