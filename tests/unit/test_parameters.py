"""The run's parameters are declared once (goggles.parameters): the pipeline, the components,
the command line and the stage configs all agree with that declaration."""

from __future__ import annotations

import inspect
from dataclasses import fields

import pytest

from goggles import parameters
from goggles.cli import _parser
from goggles.config import ConfigError
from goggles.features.config import AffinityConfig, ExtractConfig
from goggles.inference.config import InferConfig
from goggles.inference.registry import METHODS
from goggles.kubeflow import components
from goggles.kubeflow.pipeline import goggles_pipeline
from goggles.parameters import RunParameters, default, names, spec, types
from goggles.pipeline.wiring import stage_config, stage_configs
from goggles.training.config import TrainConfig


def test_the_pipeline_function_spells_out_the_declared_names_types_and_defaults() -> None:
    signature = inspect.signature(goggles_pipeline.pipeline_func)
    declared = names(pipeline=True)
    assert list(signature.parameters) == declared
    for name, parameter in signature.parameters.items():
        assert parameter.default == default(name), name
        assert parameter.annotation in (types()[name], types()[name].__name__), name
    assert "output_uri" not in signature.parameters  # a cluster's outputs go to its root


@pytest.mark.parametrize("component", [components.list_source, components.ingest_part,
                                       components.join_manifest,
                                       components.plan_shards,
                                       components.extract_part, components.gather_features,
                                       components.affinity_shard,
                                       components.infer_fit, components.label_shard,
                                       components.gather_labels, components.train,
                                       components.evaluate])
def test_every_component_parameter_is_a_declared_run_parameter(component) -> None:  # type: ignore[no-untyped-def]
    kinds = {"String": str, "Integer": int, "Boolean": bool}
    parameters_of = {name: kinds[i.type] for name, i in component.component_spec.inputs.items()
                     if i.type in ("String", "Integer", "Float", "Boolean")}
    for name, kind in parameters_of.items():
        if name in ("shard_id", "num_parts", "source_fingerprint", "listing"):
            continue  # a fan-out's item and count; the listing's digests (ingest's cache key)
        assert name in names(), f"{component.name}: {name} is not a run parameter"
        assert kind is types()[name], f"{component.name}: {name}"


def test_every_stage_parameter_reaches_its_stage_config() -> None:
    """Each parameter that sets a stage is a field of that stage's config, with the declared
    default: --device reaches inference too."""
    configs = {"extract": ExtractConfig, "affinity": AffinityConfig, "infer": InferConfig,
               "train": TrainConfig}
    for stage, config in configs.items():
        field_defaults = {f.name: f.default for f in fields(config)}
        for name in names(stage=stage):
            assert field_defaults[name] == default(name), (stage, name)
    assert "device" in names(stage="infer")
    run = RunParameters(source_uri="/in", output_uri="/out", device="cpu", num_classes=3)
    built = stage_configs(run)
    assert (built["extract"].device, built["affinity"].device, built["infer"].device) == \
        ("cpu", "cpu", "cpu")
    assert built["infer"].num_classes == 3
    assert stage_config("infer", {"device": "cuda"}).device == "cuda"


def test_the_infer_component_receives_the_device() -> None:
    assert "device" in inspect.signature(components.infer_fit.python_func).parameters


def test_the_command_line_offers_every_parameter_with_its_default() -> None:
    parser = _parser()
    run = parser._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    actions = {a.dest: a for a in run._actions}
    for item in parameters.declared():
        action = actions[item.name]
        if spec(item).required:
            assert action.required or not action.option_strings, item.name
        else:
            assert action.default == item.default, item.name
        if item.name == "method":
            assert tuple(action.choices) == tuple(METHODS)
        elif spec(item).backbone:
            assert action.choices is None, item.name  # any model spec: parse_backbone checks
        elif spec(item).choices:
            assert tuple(action.choices) == spec(item).choices
    assert actions["num_shards"].option_strings == ["--shards"]
    assert actions["weights_uri"].option_strings == ["--weights"]


def test_declared_checks_name_the_parameter() -> None:
    with pytest.raises(ConfigError, match="top_k must be at least 1, got 0") as raised:
        RunParameters(top_k=0)
    assert raised.value.parameter == "top_k"
    with pytest.raises(ConfigError, match="unknown device 'tpu'") as raised:
        RunParameters(device="tpu")
    assert raised.value.parameter == "device"
    with pytest.raises(ConfigError, match="unknown method 'magic'"):
        stage_configs(RunParameters(source_uri="/in", output_uri="/out", method="magic"))
