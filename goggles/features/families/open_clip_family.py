"""``open_clip:<arch>:<pretrained tag>``: an OpenCLIP image tower (``open_clip:ViT-B-32:
laion2b_s34b_b79k``); without a tag, weights come from ``--weights`` only.

The image tower's last block's output is the filter map (a ViT's patch tokens after its final
norm, as a [C, H/p, W/p] grid; a ResNet's last stage) and the projected image embedding, the
one CLIP matches to text, is the pooled view. Preprocessing is the tower's own
(``visual.preprocess_cfg``: size, mean, std, interpolation; resized to a square, no crop).
``--weights`` takes the whole CLIP model's state dict or the image tower's alone.
"""

from __future__ import annotations

import inspect
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

LIBRARY = "open_clip"
EXTRA = "clip"
CACHE = "the Hugging Face cache ($HF_HOME/hub) or open_clip's cache_dir"


def _features(visual: Any, x: torch.Tensor) -> Any:
    options: dict[str, Any] = {"indices": 1}
    accepted = inspect.signature(visual.forward_intermediates).parameters
    if "normalize_intermediates" in accepted:
        options["normalize_intermediates"] = True
    if "output_fmt" in accepted:
        options["output_fmt"] = "NCHW"
    out = visual.forward_intermediates(x, **options)
    return out["image_intermediates"][-1], out["image_features"]


def preprocessing(visual: Any) -> Preprocessing:
    config = dict(getattr(visual, "preprocess_cfg", {}) or {})
    size = config.get("size", getattr(visual, "image_size", 224))
    side = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = tuple(config.get("mean", (0.48145466, 0.4578275, 0.40821073)))
    std = tuple(config.get("std", (0.26862954, 0.26130258, 0.27577711)))
    return Preprocessing(side, mean, std,  # type: ignore[arg-type]
                         interpolation_name(config.get("interpolation", "bicubic")))


def load(arch: str, tag: str, name: str, state: dict[str, torch.Tensor] | None,
         where: str) -> tuple[FeatureNet, str]:
    import open_clip

    if state is not None:
        model = open_clip.create_model(arch, pretrained=None)
        if all(key.startswith("visual.") for key in state) or \
                not any(key.startswith("visual.") for key in state):
            state = {key.removeprefix("visual."): value for key, value in state.items()}
            load_state(model.visual, state, name, where)
        else:
            load_state(model, state, name, where)
        source = where
    elif not tag:
        raise WeightsNotFound(f"backbone {name!r} names no pretrained tag; give one "
                              f"(open_clip:{arch}:<tag>, see open_clip.list_pretrained()) or "
                              "pass --weights URI")
    else:
        try:
            model = open_clip.create_model(arch, pretrained=tag)
        except Exception as error:  # noqa: BLE001 - offline and uncached lands here
            logger.debug("open_clip could not load %s/%s: %s", arch, tag, error)
            raise WeightsNotFound(offline_message(name, CACHE)) from None
        source = f"open_clip {arch} {tag}"
    visual = frozen(model.visual)
    return FeatureNet(visual, _features, preprocessing(visual), True), source
