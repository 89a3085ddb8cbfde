"""The backbone's own ImageNet classifier as a labeler (paper §5.1's "backbone" column;
``--method backbone``).

The classifier (the rest of the network after the layer the filter maps come from) is applied to
the filter maps as they are extracted (:func:`imagenet_head`; the features keep the logits). The
K ImageNet classes predicted (arg-max) most often become the clusters, named after them, and
each image's probabilities are the softmax of its logits restricted to those K classes. This
needs no label and no hand mapping; evaluation then maps clusters to the true classes with the
same Hungarian matching as every method. Where the weights carry no classifier (the packaged
VGG-16 ships conv layers only) it fails with
:class:`BackboneHeadUnavailable`, naming the fix; a run checks that before extraction
(:func:`goggles.pipeline.wiring.check_run`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from scipy.special import logsumexp

from goggles.inference.base import Method, MethodParameters
from goggles.inference.summary import finish_labeler

if TYPE_CHECKING:
    from goggles.inference.seeds import Seeds
    from goggles.io.blocks import RowBlocks
    from goggles.io.features_folder import FilterMaps


class BackboneHeadUnavailable(RuntimeError):
    """The backbone's weights carry no ImageNet classifier; the message says how to add one."""


def classifier_weights(backbone: str, weights_uri: str = "") -> dict[str, Any]:
    """The backbone's full weights, classifier included, or :class:`BackboneHeadUnavailable`
    naming the ways to provide them (checked before a run starts, see
    goggles.pipeline.wiring.check_run)."""
    from goggles.features.backbones import SPECS, resolve_weights

    state, source = resolve_weights(backbone, weights_uri)
    if not any(key.startswith("classifier.") for key in state):
        raise BackboneHeadUnavailable(
            f"method 'backbone' needs {backbone}'s ImageNet classifier, but its weights "
            f"({source}) hold only the convolutional layers. Put torchvision's "
            f"{SPECS[backbone].torchvision_file} (the full model) in torch's hub cache "
            "($TORCH_HOME/hub/checkpoints) or pass --weights with a full state dict, or use "
            "--backbone mobilenet_v2, whose packaged weights include the classifier")
    return state


def imagenet_head(backbone: str,
                  weights_uri: str = "") -> Callable[[np.ndarray], np.ndarray] | None:
    """The backbone's ImageNet classifier as a function of a block of its filter maps
    ([n, C, H, W] → logits [n, 1000] float64), or ``None`` when its weights hold only the
    convolutional layers. The extract stage keeps these logits beside the descriptors, so the
    ``backbone`` method never reads the filter maps."""
    import torch

    from goggles.features.backbones import SPECS, resolve_weights

    if backbone not in SPECS:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(SPECS)}")
    state, _ = resolve_weights(backbone, weights_uri)
    if not any(key.startswith("classifier.") for key in state):
        return None
    with torch.device("meta"):  # no random initialisation: every tensor comes from the weights
        model: Any = SPECS[backbone].build()
    model.load_state_dict({key: value.float() if value.is_floating_point() else value
                           for key, value in state.items()}, strict=True, assign=True)
    model.eval()

    def logits(block: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))
            if backbone == "vgg16":
                x = torch.flatten(model.avgpool(x), 1)
            else:  # torchvision's MobileNetV2.forward after .features
                x = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, (1, 1)), 1)
            return model.classifier(x).numpy().astype(np.float64)  # type: ignore[no-any-return]

    return logits


def logits_of(filter_maps: FilterMaps) -> np.ndarray:
    """ImageNet logits [N, 1000] of the backbone's classifier applied to its filter maps."""
    classifier_weights(filter_maps.backbone, filter_maps.weights_uri)  # the error says how
    head = imagenet_head(filter_maps.backbone, filter_maps.weights_uri)
    assert head is not None
    return np.concatenate([head(block) for block in filter_maps.blocks()])


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names, in torchvision's order."""
    from torchvision.models import MobileNet_V2_Weights

    return list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def restrict_to_top_classes(logits: np.ndarray,
                            num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``num_classes`` classes predicted most often and the softmax over just them.

    Parameters
    ----------
    logits : [N, C] scores over C >= K classes.

    Returns
    -------
    (probs [N, K], chosen [K] class indices): classes ranked by how many images take them as
    arg-max, ties (and classes no image takes) by total softmax probability.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape[1] < num_classes:
        raise ValueError(f"{num_classes} classes requested from a {logits.shape[1]}-way "
                         "classifier")
    counts = np.bincount(logits.argmax(axis=1), minlength=logits.shape[1])
    mass = np.exp(logits - logsumexp(logits, axis=1, keepdims=True)).sum(axis=0)
    chosen = np.lexsort((-mass, -counts))[:num_classes]
    restricted = logits[:, chosen]
    probs = np.exp(restricted - logsumexp(restricted, axis=1, keepdims=True))
    return probs, chosen




@dataclass
class ImageNetLabeler(Method):
    """The backbone's ImageNet classifier as a method (module docstring)."""

    num_classes: int
    variance_floor: float = 1e-3
    exclude_self: bool = False
    converged_: bool = field(default=True, init=False)

    name: ClassVar[str] = "backbone"
    summary: ClassVar[str] = "the backbone's own ImageNet classifier (needs its weights' head)"
    reads: ClassVar[frozenset[str]] = frozenset({"imagenet_logits"})

    @classmethod
    def from_config(cls, config: MethodParameters) -> ImageNetLabeler:
        return cls(num_classes=config.num_classes, variance_floor=config.variance_floor,
                   exclude_self=config.exclude_self)

    def fit(self, affinity: np.ndarray | RowBlocks, source_index: np.ndarray, *,
            filter_maps: FilterMaps | None = None,
            descriptors: list[np.ndarray] | None = None,
            seeds: Seeds | None = None,
            imagenet_logits: np.ndarray | None = None) -> ImageNetLabeler:
        """Label by ``imagenet_logits`` [N, 1000] (the extract stage's), or by the classifier
        applied to ``filter_maps``."""
        if imagenet_logits is None:
            if filter_maps is None:
                raise ValueError("method 'backbone' needs the ImageNet logits the extract stage "
                                 "keeps (or the filter maps)")
            imagenet_logits = logits_of(filter_maps)
        self.warnings_ = []
        probs, chosen = restrict_to_top_classes(imagenet_logits, self.num_classes)
        names = imagenet_categories()
        self.cluster_names_ = [names[c] for c in chosen]
        finish_labeler(self, affinity, source_index, probs)
        return self
