"""What every stage's configuration shares: the error type, the validated dataclass base and the
names a run may choose from (backbones, devices, number formats, image suffixes).

This module and :mod:`goggles.parameters` form the base layer: they import nothing else of
goggles. Each stage declares its own configuration beside its code
(:class:`goggles.ingest.config.IngestConfig`, :class:`goggles.features.config.ExtractConfig`,
:class:`goggles.features.config.AffinityConfig`, :class:`goggles.inference.config.InferConfig`);
a bad value raises :class:`ConfigError` naming the parameter, what was expected and what to do.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

BACKBONES = ("vgg16", "mobilenet_v2")
# Channels C of each backbone's filter map (goggles.features.backbones.SPECS holds the same
# numbers, a test checks; this copy keeps the base layer free of torch). top_k cannot exceed C.
BACKBONE_CHANNELS = {"vgg16": 512, "mobilenet_v2": 1280}
# Model specifications of the libraries that carry other networks (goggles.features.backbones):
# family -> (form, number of fields after the family).
BACKBONE_FAMILIES = {"torchvision": ("torchvision:<arch>", 1), "timm": ("timm:<arch>", 1),
                     "open_clip": ("open_clip:<arch>:<pretrained tag>", 2),
                     "hf": ("hf:<model id>", 1)}


def parse_backbone(value: str) -> tuple[str, str, str]:
    """``(family, architecture, tag)`` of a backbone name: ``vgg16`` and ``mobilenet_v2`` are
    family ``goggles`` (today's two nets); otherwise ``family:arch`` or, for OpenCLIP,
    ``open_clip:arch:tag`` (the tag may be empty: weights from --weights only). Raises
    :class:`ConfigError` naming the accepted forms."""
    if value in BACKBONES:
        return "goggles", value, ""
    forms = ", ".join([*BACKBONES, *(form for form, _ in BACKBONE_FAMILIES.values())])
    family, _, rest = value.partition(":")
    if family not in BACKBONE_FAMILIES or not rest:
        raise ConfigError(f"unknown backbone {value!r}; give one of {forms} (e.g. "
                          "timm:vit_small_patch14_dinov2)", "backbone")
    arch, tag = (rest.split(":", 1) + [""])[:2] if family == "open_clip" else (rest, "")
    check(bool(arch.strip()) and arch == arch.strip() and ":" not in arch,
          f"backbone {value!r} names no architecture; the form is "
          f"{BACKBONE_FAMILIES[family][0]}", "backbone")
    return family, arch, tag


def backbone_file_name(value: str) -> str:
    """A backbone's name as it appears in file and folder names (descriptor files, feature
    cache folders): today's two names unchanged; ``:`` and ``/`` of a model spec become ``_``
    and ``--`` (``hf:facebook/dinov2-small`` → ``hf_facebook--dinov2-small``)."""
    return value.replace("/", "--").replace(":", "_")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float16", "bfloat16")
PRECISIONS = ("auto", "float32", "float16", "bfloat16")
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
)


class StageError(RuntimeError):
    """A stage cannot run with the inputs it was given (too few images, a missing artifact);
    the message says what to change."""


class ConfigError(ValueError):
    """A parameter is out of range or inconsistent; the message says how to fix it.

    ``parameter`` names the run parameter at fault when there is one, so the command line can
    name its flag.
    """

    def __init__(self, message: str, parameter: str = ""):
        super().__init__(message)
        self.parameter = parameter


def check(condition: bool, message: str, parameter: str = "") -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message, parameter)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    check(value in choices, f"unknown {name} {value!r}; choose one of {', '.join(choices)}", name)


class Config:
    """Base of the stage configurations (frozen dataclasses): a dict round-trip for artifacts,
    metadata and resume keys."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload, no-any-return]

    @classmethod
    def from_dict(cls, values: dict[str, Any]):  # type: ignore[no-untyped-def]
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        check(not unknown, f"{cls.__name__}: unknown parameter(s) {unknown}; "
                           f"expected some of {sorted(known)}")
        return cls(**values)
