"""``timm:<arch>``: any timm model (``timm:vit_small_patch14_dinov2``, ``timm:convnext_tiny``).

A CNN's ``forward_features`` is its filter map; a vision transformer's is its token sequence,
whose patch tokens form the map (its ``num_prefix_tokens`` class and register tokens dropped)
and whose ``forward_head(pre_logits=True)`` is the pooled embedding view. Preprocessing is the
model's own data config (input size, mean, std, interpolation; no crop).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

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

LIBRARY = "timm"
EXTRA = "timm"
CACHE = "the Hugging Face cache ($HF_HOME/hub)"


def _features(model: Any, x: torch.Tensor) -> Any:
    out = model.forward_features(x)
    if out.ndim == 4:
        if getattr(model, "output_fmt", "NCHW") == "NHWC":
            out = out.permute(0, 3, 1, 2)
        return out
    maps = tokens_to_maps(out, int(getattr(model, "num_prefix_tokens", 0)))
    return maps, model.forward_head(out, pre_logits=True)


def preprocessing(model: Any) -> Preprocessing:
    import timm.data

    config = timm.data.resolve_data_config({}, model=model)
    size = config["input_size"]
    if size[1] != size[2]:
        logger.warning("%s takes %dx%d images; goggles feeds squares of %d", type(model).__name__,
                       size[1], size[2], size[1])
    return Preprocessing(int(size[1]), tuple(config["mean"]), tuple(config["std"]),
                         interpolation_name(config.get("interpolation", "bilinear")))


def load(arch: str, tag: str, name: str, state: dict[str, torch.Tensor] | None,
         where: str) -> tuple[FeatureNet, str]:
    import timm

    model: Any
    if state is not None:
        model = timm.create_model(arch, pretrained=False)
        load_state(model, state, name, where)
        source = where
    else:
        try:
            model = timm.create_model(arch, pretrained=True)
        except Exception as error:  # noqa: BLE001 - offline and uncached lands here
            logger.debug("timm could not load %s: %s", arch, error)
            raise WeightsNotFound(offline_message(name, CACHE)) from None
        source = f"timm {arch} ({model.pretrained_cfg.get('hf_hub_id') or 'pretrained'})"
    pre = preprocessing(model)
    frozen(model)
    with torch.inference_mode():  # a transformer's features are tokens [n, T, C]
        embeds = model.forward_features(torch.zeros(1, 3, pre.image_size, pre.image_size)).ndim == 3
    return FeatureNet(model, _features, pre, embeds), source
