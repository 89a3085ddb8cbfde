"""The parameters of a run, declared once.

Each field of :class:`RunParameters` is one parameter of a run: its name (the same from
``pipeline.py`` through the components and the stage configs to the library), its type, its
default, its help text, its ``goggles run`` option and its checks. Everything else derives
from this declaration:

* the options of ``goggles run`` (:mod:`goggles.cli`);
* the stage configs of a run (:func:`goggles.pipeline.wiring.stage_config`), and the defaults
  of those configs' fields (``default("top_k")``);
* the arguments the local and docker runners pass to the pipeline
  (:func:`goggles.kubeflow.runner.pipeline_arguments`);
* the parameters of the pipeline: ``pipeline.py`` spells its defaults out literally, as Kubeflow
  shows them in its run form, and a test asserts they equal the ones here.
"""

from __future__ import annotations

import typing
from dataclasses import Field, dataclass, field, fields
from typing import Any

from goggles.config import DEVICES, check, parse_backbone

STAGES = ("ingest", "extract", "affinity", "infer", "train")
MAX_SHARDS = 1024
"""Affinity shards at most: each is a pod; 1M images in 1,024 shards are ~1,000 rows each."""


@dataclass(frozen=True)
class Spec:
    """How one run parameter is presented and checked.

    Attributes
    ----------
    help : one line for ``goggles run --help`` and the pipeline's docstring.
    flag : the ``goggles run`` option; ``""`` is ``--`` and the name with dashes; ``"SOURCE"``
        is the positional argument.
    choices : the values allowed (``()``: any; ``method``'s come from the inference registry).
    minimum, maximum : the range of values allowed, for numbers.
    required : ``goggles run`` needs it (no usable default).
    pipeline : a parameter of the Kubeflow pipeline (the output is not: on a cluster, outputs go
        to the pipeline root).
    stages : the stage configs this parameter sets.
    uri : a URI, which the local runners make absolute.
    metavar : the placeholder ``goggles run --help`` shows for the value.
    backbone : a network's name (:func:`goggles.config.parse_backbone`: ``vgg16``,
        ``mobilenet_v2`` or a model spec such as ``timm:<arch>``), or ``none`` where listed in
        ``choices``.
    """

    help: str
    flag: str = ""
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    required: bool = False
    pipeline: bool = True
    stages: tuple[str, ...] = ()
    uri: bool = False
    metavar: str = ""
    backbone: bool = False


def _parameter(default: Any, help: str, **spec: Any) -> Any:
    return field(default=default, metadata={"spec": Spec(help, **spec)})


@dataclass(frozen=True)
class RunParameters:
    """Everything a run needs (see the module docstring)."""

    source_uri: str = _parameter(
        "", "folder or bucket prefix of the images (a path, file://, memory://, gs:// or "
        "s3://); first-level folders are read as ground-truth labels",
        flag="SOURCE", required=True, uri=True)
    output_uri: str = _parameter(
        "", "where labels, metrics and the report go (a path or bucket prefix)",
        flag="--output", required=True, pipeline=False, uri=True, metavar="OUT")
    num_classes: int = _parameter(2, "number of classes K to find", minimum=2, required=True,
                                  stages=("infer",), metavar="K")
    backbone: str = _parameter(
        "vgg16", "the network whose filter maps (a transformer's patch tokens) give the "
        "prototypes: vgg16, mobilenet_v2, torchvision:<arch>, timm:<arch>, "
        "open_clip:<arch>:<tag> or hf:<model id> (docs/backbones.md)", backbone=True,
        stages=("extract",), metavar="NET")
    weights_uri: str = _parameter(
        "", "the backbone's weights (a state dict or safetensors file: a path, gs://, s3://); "
        "default: the library's cache, then a download (docs/backbones.md)", flag="--weights",
        stages=("extract",), uri=True, metavar="URI")
    weights_sha256: str = _parameter(
        "", "the SHA-256 (hex) the --weights file must have; the run is refused before any "
        "stage when it differs", stages=("extract",), metavar="HEX")
    top_k: int = _parameter(5, "prototypes per image (the paper: 5)", minimum=1,
                            stages=("extract",))
    max_prototypes: int = _parameter(
        -1, "cap on the prototypes (columns of A); -1: chosen from the number of images and "
        "classes, never binding below 2,000 images (docs/scale.md); 0: no cap", minimum=-1,
        stages=("extract",))
    num_shards: int = _parameter(0, "row shards of the images: one extract, affinity and label "
                                 "task (pod) each; 0: one per 10,240 accepted images (goggles "
                                 "plan)",
                                 flag="--shards", minimum=0, maximum=MAX_SHARDS,
                                 stages=("affinity",))
    method: str = _parameter("graph-em", "class inference: one of the methods listed below",
                             stages=("infer",))
    max_iter: int = _parameter(100, "EM iterations at most", minimum=1, stages=("infer",))
    seed: int = _parameter(0, "the one seed of everything random", minimum=0,
                           stages=("extract", "infer", "train"))
    dev_labels_uri: str = _parameter(
        "", "labels of a few images (the ones goggles suggest asks for): a CSV or Parquet of "
        "uri,label, or a Label Studio JSON / JSON-MIN export; they name the classes and guide "
        "inference",
        flag="--dev-labels", uri=True, metavar="FILE")
    device: str = _parameter(
        "auto", "where the CNN, the affinity GEMM and the E-step run; auto: a GPU when there "
        "is one", choices=DEVICES, stages=("extract", "affinity", "infer"))
    follow_symlinks: bool = _parameter(
        False, "follow symlinks that lead outside the source (off: such files are rejected "
        "and such folders skipped, so a source cannot expose other files)",
        stages=("ingest",))
    verify: bool = _parameter(
        False, "decide reuse (resume, --cache) by every local source file's content, as for "
        "sources of at most 256 MiB: hash them all, not only those whose metadata changed",
        stages=("ingest",))
    feature_cache_uri: str = _parameter(
        "", "keep each image's features here (a folder or bucket prefix) and reuse them on "
        "later runs: only images not seen before are extracted", flag="--feature-cache",
        stages=("extract",), uri=True, metavar="URI")
    descriptor_backbone: str = _parameter(
        "mobilenet_v2", "graph-em: a second network whose bilinear descriptors join the graph "
        "(+25% extract time beside VGG-16), any name --backbone takes; none to skip it",
        choices=("none",), backbone=True, stages=("extract",), metavar="NET")
    train: bool = _parameter(
        False, "also train an end classifier on the labels (a linear head on the run's "
        "descriptors, noise-aware loss) and write it to OUT/model; see docs/training.md")

    def __post_init__(self) -> None:
        for name in names():
            check_parameter(name, getattr(self, name))

    def pipeline_arguments(self) -> dict[str, Any]:
        """The values of the pipeline's parameters, by name."""
        return {f.name: getattr(self, f.name) for f in declared() if spec(f).pipeline}


def declared() -> tuple[Field[Any], ...]:
    """The fields of :class:`RunParameters`, in declaration order."""
    return fields(RunParameters)


def names(*, stage: str = "", pipeline: bool | None = None) -> list[str]:
    """Names of the run parameters, optionally only those that set ``stage``'s config or those
    that are (or are not) pipeline parameters."""
    return [f.name for f in declared()
            if (not stage or stage in spec(f).stages)
            and (pipeline is None or spec(f).pipeline == pipeline)]


def spec(item: Field[Any] | str) -> Spec:
    """The :class:`Spec` of a field or of the parameter named ``item``."""
    found = item if isinstance(item, Field) else RunParameters.__dataclass_fields__[item]
    return found.metadata["spec"]  # type: ignore[no-any-return]


def default(name: str) -> Any:
    """The default value of parameter ``name``."""
    return RunParameters.__dataclass_fields__[name].default


def types() -> dict[str, type]:
    """Parameter name -> Python type (``str``, ``int``)."""
    hints = typing.get_type_hints(RunParameters)
    return {f.name: hints[f.name] for f in declared()}


def check_parameter(name: str, value: Any) -> None:
    """Check ``value`` against parameter ``name``'s declared choices and minimum."""
    declared_spec = spec(name)
    if declared_spec.backbone:
        if value not in declared_spec.choices:
            try:
                parse_backbone(value)
            except ValueError as error:
                raise type(error)(str(error).replace("backbone", name, 1), name) from None
    elif name == "weights_sha256":
        check(value == "" or (len(value) == 64 and all(c in "0123456789abcdef" for c in value)),
              f"weights_sha256 must be 64 lowercase hex digits (`sha256sum FILE`), got "
              f"{value!r}", name)
    elif declared_spec.choices:
        check(value in declared_spec.choices, f"unknown {name} {value!r}; choose one of "
                                              f"{', '.join(declared_spec.choices)}", name)
    if declared_spec.minimum is not None:
        check(value >= declared_spec.minimum,
              f"{name} must be at least {declared_spec.minimum}, got {value}", name)
    if declared_spec.maximum is not None:
        check(value <= declared_spec.maximum,
              f"{name} must be at most {declared_spec.maximum}, got {value}", name)
