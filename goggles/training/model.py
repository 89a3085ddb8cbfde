"""The end model's artifact: ``OUT/model/`` (a KFP ``Model``), loadable without goggles.

Layout
------
``model.safetensors``
    ``mean`` [D], ``scale`` [D]: the standardisation of the input; ``layers.0.weight`` [K, D]
    and ``layers.0.bias`` [K] (``linear`` head), or ``layers.0.*`` [H, D]/[H], ReLU,
    ``layers.2.*`` [K, H]/[K] (``mlp``); float32. ``sketch.<backbone>.bucket`` (int32) and
    ``sketch.<backbone>.sign`` (int8) [C(C+1)/2]: the count sketch of each input network's
    descriptor, so the features can be computed without goggles.
``model.json``
    ``classes`` (the K label names, in output order), ``head`` (kind, sizes, formula),
    ``input`` (the networks whose descriptors are concatenated, in order, with their weights'
    source, channels and dimension), ``preprocessing`` (image size, resize, normalisation),
    ``descriptor`` (how a filter map becomes a descriptor), ``training`` (loss, targets,
    images, seed, the run's labeling method) and ``evaluation`` (the held-out scores that
    ``metrics.json`` shows as ``end_model``); ``format`` and ``goggles_version``.

Loading it without goggles (torch, torchvision, safetensors, Pillow)::

    import json, numpy as np, torch, torchvision
    from PIL import Image, ImageOps
    from safetensors.torch import load_file

    meta = json.load(open("model/model.json"))
    tensors = load_file("model/model.safetensors")
    pre = meta["preprocessing"]

    def descriptor(maps, bucket, sign):           # maps [n, C, H, W] -> [n, 2048]
        n, c, h, w = maps.shape
        x = maps.reshape(n, c, h * w)
        gram = x @ x.transpose(1, 2) / (h * w)     # bilinear pooling
        i, j = torch.triu_indices(c, c)
        v = gram[:, i, j]
        v = v.sign() * v.abs().sqrt() * torch.where(i == j, 1.0, 2 ** 0.5)
        out = torch.zeros(n, meta["descriptor"]["dim"]).index_add_(
            1, bucket.long(), v * sign.float())   # count sketch
        return out / out.norm(dim=1, keepdim=True).clamp_min(1e-12)

    image = ImageOps.exif_transpose(Image.open(path)).convert("RGB").resize(
        (pre["image_size"],) * 2, Image.Resampling.BILINEAR)
    x = (torch.from_numpy(np.asarray(image, np.float32) / 255)
         - torch.tensor(pre["mean"])) / torch.tensor(pre["std"])
    x = x.permute(2, 0, 1)[None]
    parts = []
    for net in meta["input"]["networks"]:     # e.g. vgg16, then mobilenet_v2
        cnn = getattr(torchvision.models, net["backbone"])(weights="IMAGENET1K_V1").features
        with torch.no_grad():
            maps = cnn.eval()(x)
        parts.append(descriptor(maps, tensors[f"sketch.{net['backbone']}.bucket"],
                                tensors[f"sketch.{net['backbone']}.sign"]))
    z = (torch.cat(parts, 1) - tensors["mean"]) / tensors["scale"]
    logits = z @ tensors["layers.0.weight"].T + tensors["layers.0.bias"]   # linear head
    label = meta["classes"][int(logits.argmax())]

What a user reproduces is therefore the truncated torchvision network (``features``: VGG-16
through its last max-pool, MobileNetV2 through its last 1x1 conv block), the paper's resize to
``image_size`` x ``image_size`` (no crop; EXIF orientation applied, as goggles decodes), the
signed-square-root bilinear pooling and the stored count sketch — about twenty lines, above;
``tests/unit/test_training.py`` checks those lines against goggles' own descriptors. In goggles,
:func:`load_model` returns an :class:`EndModel` that does the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from goggles.features.descriptors import SKETCH_DIM, SKETCH_SEED, sketch_tables
from goggles.io import artifacts
from goggles.training.head import Head, predict_proba

LAYERS = {"vgg16": "torchvision.models.vgg16().features: every layer through the last max-pool "
                   "([512, S/32, S/32])",
          "mobilenet_v2": "torchvision.models.mobilenet_v2().features: through the last 1x1 conv "
                          "+ BN + ReLU6 ([1280, S/32, S/32])"}
CHANNELS = {"vgg16": 512, "mobilenet_v2": 1280}
FORMULAS = {"linear": "logits = layers.0((x - mean) / scale); probs = softmax(logits)",
            "mlp": "logits = layers.2(relu(layers.0((x - mean) / scale))); "
                   "probs = softmax(logits)"}


@dataclass
class EndModel:
    """A trained end classifier and its ``model.json`` (``meta``)."""

    head: Head
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def networks(self) -> list[dict[str, Any]]:
        """The networks whose descriptors form the input, in order."""
        return list(self.meta["input"]["networks"])

    @property
    def image_size(self) -> int:
        return int(self.meta["preprocessing"]["image_size"])

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """[n, K] class probabilities of the concatenated descriptors ``features`` [n, D]."""
        return predict_proba(self.head, features)


def network_entry(backbone: str, weights: str = "", channels: int | None = None,
                  dim: int = SKETCH_DIM) -> dict[str, Any]:
    """``model.json``'s description of one input network: its bilinear descriptor of
    ``channels`` channels (today's two networks: known), or with ``channels=0`` a
    ``<backbone>@pooled`` embedding of ``dim`` dimensions, unit length, not sketched."""
    channels = CHANNELS[backbone] if channels is None else channels
    layer = LAYERS.get(backbone, f"{backbone}: its last feature map (a transformer's patch "
                                 f"tokens as a grid, [{channels}, h, w])" if channels else
                       f"{backbone}: the pooled or class-token embedding, unit length")
    return {"backbone": backbone, "weights": weights, "channels": channels, "layer": layer,
            "dim": dim}


def describe(*, classes: Sequence[str], head: str, hidden: int, networks: Sequence[dict[str, Any]],
             image_size: int, training: dict[str, Any], evaluation: dict[str, Any]
             ) -> dict[str, Any]:
    """The ``model.json`` of a head (:mod:`goggles.training.model`'s docstring)."""
    from goggles.features.backbones import IMAGENET_MEAN, IMAGENET_STD

    return {
        "classes": list(classes),
        "head": {"kind": head, "hidden": hidden if head == "mlp" else 0,
                 "formula": FORMULAS[head]},
        "input": {"features": "bilinear descriptors of each network, concatenated in order",
                  "networks": list(networks),
                  "dim": sum(int(network["dim"]) for network in networks)},
        "preprocessing": {"image_size": image_size, "color": "RGB, EXIF orientation applied",
                          "resize": "bilinear to image_size x image_size (aspect not kept, no "
                                    "crop)",
                          "scale": "pixel / 255", "mean": list(IMAGENET_MEAN),
                          "std": list(IMAGENET_STD)},
        "descriptor": {"pooling": "mean over positions of the outer product of the position "
                                  "vectors ([C, C])",
                       "signed_sqrt": True,
                       "entries": "upper triangle, numpy.triu_indices(C) order; off-diagonal "
                                  "entries times sqrt(2)",
                       "sketch": "count sketch: out[bucket[i]] += sign[i] * entry[i] "
                                 "(tensors sketch.<backbone>.bucket/sign)",
                       "sketch_seed": SKETCH_SEED, "dim": SKETCH_DIM, "unit_length": True},
        "training": training,
        "evaluation": evaluation,
    }


def save_model(uri: str, head: Head, meta: dict[str, Any]) -> None:
    """Write ``head`` and ``meta`` (:func:`describe`) as a model folder at ``uri``."""
    tensors = {name: value.detach().cpu().float().numpy()
               for name, value in head.state_dict().items()}
    for network in meta["input"]["networks"]:
        if not int(network["channels"]):
            continue  # a pooled embedding: no sketch
        bucket, sign = sketch_tables(int(network["channels"]))
        tensors[f"sketch.{network['backbone']}.bucket"] = bucket.astype(np.int32)
        tensors[f"sketch.{network['backbone']}.sign"] = sign.astype(np.int8)
    artifacts.write_model(uri, tensors, meta)


def load_model(uri: str) -> EndModel:
    """The end model at ``uri``: a model folder, or a run's output folder (its ``model/``)."""
    tensors, meta = artifacts.read_model(uri)
    weights = {name: torch.from_numpy(np.array(value)) for name, value in tensors.items()
               if not name.startswith("sketch.")}
    dim = int(weights["mean"].shape[0])
    num_classes = len(meta["classes"])
    head = Head(dim, num_classes, int(meta["head"].get("hidden", 0)))
    head.load_state_dict(weights, strict=True)
    return EndModel(head=head.eval(), meta=meta)
