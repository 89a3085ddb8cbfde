"""Every stage's parameters, as frozen dataclasses validated on construction.

The same snake_case names run from ``pipeline.py`` through the components and the CLI to the
library (``num_classes``, ``top_k``, ``max_iter``, ``seed`` ...). A bad value raises
:class:`ConfigError` naming the parameter, what was expected, and what to do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

BACKBONES = ("vgg16", "mobilenet_v2")
# Channels C of each backbone's filter map (goggles.backbones.SPECS holds the same numbers; this
# copy keeps config free of torch). top_k cannot exceed C.
BACKBONE_CHANNELS = {"vgg16": 512, "mobilenet_v2": 1280}
# graph-em: the default (goggles.graph); em: the paper's GOGGLES; kmeans: AF+KM; em-random: EM
# from a random start; pgm: AF+PGM (Snorkel); backbone: the backbone's ImageNet classifier as a
# labeler (goggles.baselines)
METHODS = ("graph-em", "em", "kmeans", "em-random", "pgm", "backbone")
DEFAULT_METHOD = "graph-em"
# graph EM's second opinion: MobileNetV2 adds ~25% to VGG-16's extract time on CPU (README)
DEFAULT_DESCRIPTOR_BACKBONE = "mobilenet_v2"
M_STEPS = ("sampled", "soft")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float16", "bfloat16")
PRECISIONS = ("auto", "float32", "float16", "bfloat16")
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
)


class ConfigError(ValueError):
    """A parameter is out of range or inconsistent; the message says how to fix it."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


class _Config:
    """Shared helpers: dict round-trip for artifacts, metadata and the pipeline."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload, no-any-return]

    @classmethod
    def from_dict(cls, values: dict[str, Any]):  # type: ignore[no-untyped-def]
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        _check(not unknown, f"{cls.__name__}: unknown parameter(s) {unknown}; "
                            f"expected some of {sorted(known)}")
        return cls(**values)


@dataclass(frozen=True)
class IngestConfig(_Config):
    """Parameters of the ingest stage.

    Attributes
    ----------
    extensions : file name suffixes listed as images (case-insensitive); other files are ignored.
    max_pixels : images with more pixels are rejected as decompression bombs.
    max_bytes : files larger than this are rejected without being read.
    labels_from_folders : take ground-truth labels from the first folder level (ImageFolder).
    """

    extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    max_pixels: int = 64_000_000
    max_bytes: int = 256 * 1024 * 1024
    labels_from_folders: bool = True

    def __post_init__(self) -> None:
        _check(len(self.extensions) > 0, "extensions must name at least one suffix, e.g. '.jpg'")
        _check(all(e.startswith(".") for e in self.extensions),
               f"extensions must start with a dot, got {self.extensions}")
        _check(self.max_pixels > 0, f"max_pixels must be positive, got {self.max_pixels}")
        _check(self.max_bytes > 0, f"max_bytes must be positive, got {self.max_bytes}")


@dataclass(frozen=True)
class ExtractConfig(_Config):
    """Parameters of filter-map extraction and prototype selection (paper §3.1).

    Attributes
    ----------
    backbone : CNN whose last feature map is used; one of ``BACKBONES``.
    weights_uri : explicit weights (torchvision state dict or safetensors); ``""`` resolves
        them automatically (see :mod:`goggles.backbones`).
    image_size : images are resized to ``image_size x image_size`` (224 gives 7x7 maps).
    top_k : channels picked by global max pooling per image; duplicates positions are dropped,
        so each image yields between 1 and ``top_k`` prototypes.
    batch_size : images per forward pass.
    num_workers : image-decoding worker processes; -1 picks one per spare core.
    device : ``auto`` uses CUDA when present.
    precision : autocast of the forward pass: ``auto`` is bfloat16 (float16 on GPUs without it)
        on a GPU and float32 on a CPU; see :func:`goggles.device.autocast_dtype`.
    shard_size : images per filter-map shard file.
    max_prototypes : cap on the number of prototypes (columns of A); 0 keeps all. See
        :mod:`goggles.budget` for the selection rule.
    seed : seed of the budget's sampling.
    descriptor_backbone : a second network whose bilinear descriptors graph EM adds to its
        graph (:mod:`goggles.graph`); ``none`` for none. Ignored when equal to ``backbone``.
    """

    backbone: str = "vgg16"
    weights_uri: str = ""
    image_size: int = 224
    top_k: int = 5
    batch_size: int = 32
    num_workers: int = -1
    device: str = "auto"
    precision: str = "auto"
    shard_size: int = 2048
    max_prototypes: int = 0
    seed: int = 0
    descriptor_backbone: str = DEFAULT_DESCRIPTOR_BACKBONE

    def __post_init__(self) -> None:
        _check(self.descriptor_backbone in BACKBONES + ("none",),
               f"unknown descriptor_backbone {self.descriptor_backbone!r}; choose one of "
               f"{', '.join(BACKBONES + ('none',))}")
        _check(self.backbone in BACKBONES,
               f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        _check(self.image_size >= 32, f"image_size must be at least 32, got {self.image_size}")
        _check(self.top_k >= 1, f"top_k must be at least 1, got {self.top_k}")
        channels = BACKBONE_CHANNELS[self.backbone]
        _check(self.top_k <= channels,
               f"top_k={self.top_k} exceeds the {channels} channels of {self.backbone}'s filter "
               f"map; use top_k <= {channels} (the paper uses 5)")
        _check(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}")
        _check(self.num_workers >= -1, f"num_workers must be -1 (auto) or >= 0, "
                                       f"got {self.num_workers}")
        _check(self.device in DEVICES,
               f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")
        _check(self.precision in PRECISIONS,
               f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        _check(self.shard_size >= 1, f"shard_size must be at least 1, got {self.shard_size}")
        _check(self.max_prototypes >= 0, f"max_prototypes must be 0 (no budget) or positive, "
                                         f"got {self.max_prototypes}")
        _check(self.seed >= 0, f"seed must be non-negative, got {self.seed}")


@dataclass(frozen=True)
class AffinityConfig(_Config):
    """Parameters of the affinity matrix computation (paper §3.2).

    Attributes
    ----------
    num_shards : row shards of A; each is computed by its own task (pod on a cluster).
    memory_mb : bound on the scratch memory of one similarity block; 0 sizes blocks from the
        device's free memory (half of a GPU's; see :func:`goggles.device.memory_budget_bytes`).
    dtype : arithmetic of the similarity GEMM; the output is always float32.
    device : ``auto`` uses CUDA when present.
    """

    num_shards: int = 1
    memory_mb: int = 256
    dtype: str = "float32"
    device: str = "auto"

    def __post_init__(self) -> None:
        _check(self.num_shards >= 1, f"num_shards must be at least 1, got {self.num_shards}")
        _check(self.memory_mb >= 0, f"memory_mb must be 0 (auto) or positive, "
                                    f"got {self.memory_mb}")
        _check(self.dtype in DTYPES,
               f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        _check(self.device in DEVICES,
               f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")


@dataclass(frozen=True)
class InferConfig(_Config):
    """Parameters of class inference (paper §4).

    Attributes
    ----------
    num_classes : K, the number of classes to find.
    method : ``graph-em`` (default: EM on a graph of affinity rows and bilinear descriptors,
        :mod:`goggles.graph`), ``em`` (the paper's GOGGLES: k-means start, then EM on A),
        ``kmeans`` (AF+KM, the paper's start alone),
        ``em-random`` (EM from a random start), ``pgm`` (AF+PGM: Snorkel's LabelModel on the
        discretised A), ``backbone`` (the backbone's ImageNet classifier); see
        :mod:`goggles.baselines`.
    max_iter : EM iterations at most.
    tol : EM stops when the mean absolute change of the posteriors falls below ``tol``.
    seed : the one source of randomness (k-means, sampling, random starts).
    m_step : ``sampled`` draws hard labels from the posteriors as the paper does (§4.3);
        ``soft`` weights every image by its posterior.
    variance_floor : lower bound on every fitted variance.
    exclude_self : leave out the affinity of an image to its own prototypes (always 1.0);
        kept by default, as in the paper (see :mod:`goggles.inference`).
    n_init : k-means restarts; the one with the lowest inertia starts EM.
    device : where the E-step runs: ``cpu`` (numpy float64), ``cuda`` (torch float64), ``auto``
        (CUDA when present).
    """

    num_classes: int = 2
    method: str = DEFAULT_METHOD
    max_iter: int = 100
    tol: float = 1e-4
    seed: int = 0
    m_step: str = "sampled"
    variance_floor: float = 1e-3
    exclude_self: bool = False
    n_init: int = 10
    device: str = "auto"

    def __post_init__(self) -> None:
        _check(self.num_classes >= 2,
               f"num_classes must be at least 2 (got {self.num_classes}); "
               "labeling needs two or more classes")
        _check(self.method in METHODS,
               f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        _check(self.max_iter >= 1, f"max_iter must be at least 1, got {self.max_iter}")
        _check(self.tol > 0, f"tol must be positive, got {self.tol}")
        _check(self.seed >= 0, f"seed must be non-negative, got {self.seed}")
        _check(self.m_step in M_STEPS,
               f"unknown m_step {self.m_step!r}; choose one of {', '.join(M_STEPS)}")
        _check(self.variance_floor > 0,
               f"variance_floor must be positive, got {self.variance_floor}")
        _check(self.n_init >= 1, f"n_init must be at least 1, got {self.n_init}")
        _check(self.device in DEVICES,
               f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")
