"""``hf:<model id>``: a Hugging Face transformers image model (``hf:facebook/dinov2-small``,
``hf:google/siglip-base-patch16-224``; a local folder of ``config.json`` also works).

The architecture comes from the model's ``config.json`` (the Hugging Face cache, or the
folder); an image-text model's vision tower is used. A transformer's ``last_hidden_state``
patch tokens form the filter map ([C, H/p, W/p], prefix tokens dropped) and its
``pooler_output`` (else the first token) is the pooled view; a CNN's 4-D
``last_hidden_state`` is its map. Preprocessing is the model's image processor's (size, mean,
std, resample), else its config's size with ImageNet statistics.
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
)

logger = logging.getLogger(__name__)

LIBRARY = "transformers"
EXTRA = "hf"
CACHE = "the Hugging Face cache ($HF_HOME/hub)"


def _vision(model: Any) -> Any:
    return getattr(model, "vision_model", model)


def _patch(config: Any) -> int:
    config = getattr(config, "vision_config", config)
    patch = getattr(config, "patch_size", 0)
    return int(patch[0] if isinstance(patch, (tuple, list)) else patch)


def _features(vision: Any, x: torch.Tensor) -> Any:
    out = vision(pixel_values=x)
    hidden = out.last_hidden_state
    if hidden.ndim == 4:
        return hidden
    side = x.shape[-1] // _patch(vision.config)
    prefix = hidden.shape[1] - side * side
    maps = hidden[:, prefix:].transpose(1, 2).reshape(hidden.shape[0], hidden.shape[2], side, side)
    pooled = getattr(out, "pooler_output", None)
    return maps, (pooled if pooled is not None else hidden[:, 0])


def preprocessing(model_id: str, config: Any) -> Preprocessing:
    vision = getattr(config, "vision_config", config)
    try:
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(model_id)
        size = getattr(processor, "crop_size", None) or getattr(processor, "size", {})
        size = dict(size) if not isinstance(size, int) else {"height": size}
        side = int(size.get("height") or size.get("shortest_edge") or vision.image_size)
        return Preprocessing(side, tuple(processor.image_mean), tuple(processor.image_std),
                             interpolation_name(getattr(processor, "resample", 2)))
    except Exception as error:  # noqa: BLE001 - no processor: the config's size
        logger.warning("%s has no image processor config (%s); using its config's image size "
                       "with ImageNet mean and std", model_id, str(error).splitlines()[0])
        return Preprocessing(int(getattr(vision, "image_size", 224)))


def load(arch: str, tag: str, name: str, state: dict[str, torch.Tensor] | None,
         where: str) -> tuple[FeatureNet, str]:
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(arch)
    except Exception as error:  # noqa: BLE001 - offline and uncached lands here
        logger.debug("transformers could not read %s's config: %s", arch, error)
        raise WeightsNotFound(offline_message(name, CACHE).replace(
            "no weights", "no config.json and no weights")) from None
    if state is not None:
        model = AutoModel.from_config(config)
        target = model
        if not any(key in model.state_dict() for key in state):
            target = _vision(model)  # the vision tower's state dict alone
        load_state(target, state, name, where)
        source = where
    else:
        try:
            model = AutoModel.from_pretrained(arch)
        except Exception as error:  # noqa: BLE001 - offline and uncached lands here
            logger.debug("transformers could not load %s: %s", arch, error)
            raise WeightsNotFound(offline_message(name, CACHE)) from None
        source = f"hf {arch}"
    vision = frozen(_vision(model))
    embeds = _patch(config) > 0
    return FeatureNet(vision, _features, preprocessing(arch, config), embeds), source
