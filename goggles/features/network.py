"""What every backbone family shares: a network's own preprocessing, the wrapper that turns a
model into filter maps (a transformer's patch tokens as a [C, H/p, W/p] grid) plus its pooled
embedding, and weights read from a URI with an optional SHA-256 pin.

The families (:mod:`goggles.features.families`) build their models with these; the registry
(:mod:`goggles.features.backbones`) chooses the family from the backbone's name.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from goggles.config import ConfigError
from goggles.io import storage, uris

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
POOLED = "@pooled"
"""Suffix of the name of a network's pooled (class-token) embedding view: ``timm:x@pooled``."""


class WeightsNotFound(RuntimeError):
    """No source of pretrained weights is available; the message lists every way to add one."""


@dataclass(frozen=True)
class Preprocessing:
    """How a network wants its images: resized to ``image_size`` x ``image_size`` with
    ``interpolation`` (aspect not kept, no crop, as the paper), scaled to [0, 1], then
    ``(x - mean) / std`` per channel."""

    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; choose one of "
                             f"{', '.join(INTERPOLATIONS)}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    def key(self) -> str:
        """A string that changes whenever the preprocessing does (the feature cache's key)."""
        return f"{self.image_size}|{self.mean}|{self.std}|{self.interpolation}"


def interpolation_name(value: Any, default: str = "bilinear") -> str:
    """A library's interpolation (a name, a torchvision ``InterpolationMode`` or a PIL
    resample number) as one of :data:`INTERPOLATIONS`."""
    pil = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
    if isinstance(value, int):
        return pil.get(value, default)
    name = str(getattr(value, "value", value)).lower().rsplit(".", 1)[-1]
    return name if name in INTERPOLATIONS else default


def tokens_to_maps(tokens: torch.Tensor, prefix: int) -> torch.Tensor:
    """Patch tokens [n, prefix + h*w, C] of a square input as filter maps [n, C, h, w]: the
    ``prefix`` class/register tokens are dropped, the rest laid out row by row."""
    n, count, channels = tokens.shape
    side = round((count - prefix) ** 0.5)
    if side * side != count - prefix:
        raise ValueError(f"{count - prefix} patch tokens (after {prefix} prefix tokens) do not "
                         "form a square grid; give the network a square input of its own size")
    return tokens[:, prefix:].transpose(1, 2).reshape(n, channels, side, side)


class FeatureNet(nn.Module):
    """A model of one family as goggles reads it: ``forward(x)`` maps [n, 3, S, S] images
    (normalised per :attr:`preprocessing`) to filter maps [n, C, h, w] or, when
    :attr:`embeds`, to ``(maps, embedding [n, D])``, the pooled or class-token embedding.

    ``features`` is the family's function ``(model, x) -> maps or (maps, embedding)``."""

    def __init__(self, model: nn.Module, features: Any, preprocessing: Preprocessing,
                 embeds: bool):
        super().__init__()
        self.model = model
        self._features = features
        self.preprocessing = preprocessing
        self.embeds = embeds

    def forward(self, x: torch.Tensor) -> Any:
        return self._features(self.model, x)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_weights_bytes(uri: str, sha256: str = "") -> bytes:
    """The bytes of the weights file at ``uri`` (a path, ``memory://``, ``gs://``, ``s3://``);
    with ``sha256``, refused unless they have that digest. Raises :class:`ConfigError` (one
    line, naming the fix) for a missing file or a wrong digest."""
    where = uris.redact(uri)
    try:
        data = storage.read_bytes(uri)
    except (FileNotFoundError, storage.StorageError) as error:
        raise ConfigError(f"weights {where} cannot be read ({str(error).splitlines()[0]}); "
                          "check the URI given to --weights", "weights_uri") from None
    if sha256 and sha256_hex(data) != sha256:
        raise ConfigError(f"weights {where} have SHA-256 {sha256_hex(data)}, not the pinned "
                          f"{sha256}; check the file, or the pin given to --weights-sha256",
                          "weights_sha256")
    return data


def read_state(uri: str, sha256: str = "") -> dict[str, torch.Tensor]:
    """The state dict in the weights file at ``uri``: ``.safetensors``, or anything else read
    with torch's weights-only loader (a ``{"state_dict": ...}`` wrapper is unwrapped)."""
    data = read_weights_bytes(uri, sha256)
    if uri.endswith(".safetensors"):
        from safetensors.torch import load as load_safetensors

        return load_safetensors(data)  # type: ignore[no-any-return]
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsNotFound(f"{uris.redact(uri)} does not hold a state dict (found "
                              f"{type(state).__name__}); save model.state_dict()")
    return state


def load_state(model: nn.Module, state: dict[str, torch.Tensor], name: str, where: str) -> None:
    """Load ``state`` into ``model`` strictly; a mismatch is one line naming a few keys."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsNotFound(
            f"weights {where} do not fit backbone {name!r}: {len(missing)} missing keys "
            f"({', '.join(missing[:3])}) and {len(unexpected)} unexpected "
            f"({', '.join(unexpected[:3])}); give the state dict of this architecture")


def offline_message(name: str, cache: str) -> str:
    """The one line for a model whose weights are nowhere: the two ways to provide them."""
    return (f"no weights for backbone {name!r} (offline, and not in {cache}); provide them "
            f"with --weights URI (a state dict or .safetensors file, e.g. mirrored to your "
            f"bucket; pin it with --weights-sha256) or pre-fill {cache} (docs/backbones.md)")


def frozen(module: nn.Module) -> nn.Module:
    """``module`` in eval mode with no gradients."""
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module
