"""Parameters of filter-map extraction (with prototype selection) and of the affinity matrix.

Fields that are run parameters take their defaults and checks from
:class:`goggles.parameters.RunParameters`; the others are the stage's own.
"""

from __future__ import annotations

from dataclasses import dataclass

from goggles.config import (
    BACKBONE_CHANNELS,
    DTYPES,
    PRECISIONS,
    Config,
    check,
    check_choice,
)
from goggles.parameters import check_parameter, default, names


@dataclass(frozen=True)
class ExtractConfig(Config):
    """Parameters of filter-map extraction and prototype selection (paper §3.1).

    Attributes
    ----------
    backbone : the network whose last feature map (a transformer's patch tokens) is used:
        ``vgg16``, ``mobilenet_v2`` or a model spec (:func:`goggles.config.parse_backbone`).
    weights_uri : explicit weights (torchvision state dict or safetensors); ``""`` resolves
        them automatically (see :mod:`goggles.features.backbones`).
    weights_sha256 : the SHA-256 ``weights_uri``'s bytes must have; ``""``: not checked.
    image_size : images are resized to ``image_size x image_size`` (224 gives 7x7 maps).
    top_k : channels picked by global max pooling per image; duplicate positions are dropped,
        so each image yields between 1 and ``top_k`` prototypes.
    batch_size : images per forward pass.
    num_workers : image-decoding worker processes; -1 picks one per spare core.
    device : ``auto`` uses CUDA when present.
    precision : autocast of the forward pass: ``auto`` is bfloat16 (float16 on GPUs without it)
        on a GPU and float32 on a CPU; see :func:`goggles.features.device.autocast_dtype`.
    shard_size : images per filter-map shard file.
    max_prototypes : cap on the number of prototypes (columns of A); -1 chooses it from the
        number of images and classes, 0 keeps all. See :mod:`goggles.features.budget` for the
        rule and the selection.
    seed : seed of the budget's sampling.
    descriptor_backbone : a second network whose bilinear descriptors graph EM adds to its
        graph (:mod:`goggles.features.descriptors`); ``none`` for none. Ignored when equal to
        ``backbone``.
    feature_cache_uri : where each image's features are kept across runs
        (:mod:`goggles.features.cache`); ``""``: no cache, every image is extracted.
    """

    backbone: str = default("backbone")
    weights_uri: str = default("weights_uri")
    weights_sha256: str = default("weights_sha256")
    image_size: int = 224
    top_k: int = default("top_k")
    batch_size: int = 32
    num_workers: int = -1
    device: str = default("device")
    precision: str = "auto"
    shard_size: int = 2048
    max_prototypes: int = default("max_prototypes")
    seed: int = default("seed")
    descriptor_backbone: str = default("descriptor_backbone")
    feature_cache_uri: str = default("feature_cache_uri")

    def __post_init__(self) -> None:
        for name in names(stage="extract"):
            check_parameter(name, getattr(self, name))
        check(self.image_size >= 32, f"image_size must be at least 32, got {self.image_size}")
        # a model spec's channels are known once it is built: the extract stage checks them
        channels = BACKBONE_CHANNELS.get(self.backbone, self.top_k)
        check(self.top_k <= channels,
              f"top_k={self.top_k} exceeds the {channels} channels of {self.backbone}'s filter "
              f"map; use top_k <= {channels} (the paper uses 5)", "top_k")
        check(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}")
        check(self.num_workers >= -1, f"num_workers must be -1 (auto) or >= 0, "
                                      f"got {self.num_workers}")
        check_choice("precision", self.precision, PRECISIONS)
        check(self.shard_size >= 1, f"shard_size must be at least 1, got {self.shard_size}")


@dataclass(frozen=True)
class AffinityConfig(Config):
    """Parameters of the affinity matrix computation (paper §3.2).

    Attributes
    ----------
    num_shards : row shards of A; each is computed by its own task (pod on a cluster).
    memory_mb : bound on the scratch memory of one similarity block; 0 sizes blocks from the
        device's free memory (half of a GPU's; see
        :func:`goggles.features.device.memory_budget_bytes`).
    dtype : arithmetic of the similarity GEMM; the output is always float32.
    device : ``auto`` uses CUDA when present.
    """

    num_shards: int = default("num_shards")
    memory_mb: int = 256
    dtype: str = "float32"
    device: str = default("device")

    def __post_init__(self) -> None:
        for name in names(stage="affinity"):
            check_parameter(name, getattr(self, name))
        check(self.memory_mb >= 0, f"memory_mb must be 0 (auto) or positive, "
                                   f"got {self.memory_mb}")
        check_choice("dtype", self.dtype, DTYPES)
