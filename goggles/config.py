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
