"""The compiled pipeline (``python pipeline.py``), read back with kfp's pipeline-spec protobuf.

Protobuf maps read a missing key as an empty message, so every lookup checks ``in`` first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

import goggles
from goggles import parameters
from goggles.kubeflow import pipeline as kubeflow_pipeline
from goggles.parameters import default, names
from tests.conftest import ROOT

ParameterType = pipeline_spec_pb2.ParameterType
STAGES = {"ingest": "comp-ingest-part", "extract": "comp-extract-part",
          "gather": "comp-gather-features", "affinity": "comp-affinity-shard",
          "infer": "comp-infer-fit", "train": "comp-train", "evaluate": "comp-evaluate"}
FANNED_OUT_INFER = {"comp-label-shard", "comp-gather-labels", "comp-join-manifest"}
"""The joins of the fan-outs: infer's (after the fit on the plan's sample, ``STAGES["infer"]``,
a label task per shard, a gather) and ingest's (a task per slice of the listing, the
manifest joined)."""


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory,
             ) -> tuple[pipeline_spec_pb2.PipelineSpec, pipeline_spec_pb2.PlatformSpec, str]:
    """``python pipeline.py --output X`` run as a user runs it, parsed as protobuf."""
    package = tmp_path_factory.mktemp("spec") / "goggles_pipeline.yaml"
    done = subprocess.run([sys.executable, "pipeline.py", "--output", str(package)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text = package.read_text()
    documents = list(yaml.safe_load_all(text))
    assert len(documents) == 1, "the default compile has no Kubernetes platform settings"
    spec = json_format.ParseDict(documents[0], pipeline_spec_pb2.PipelineSpec())
    return spec, pipeline_spec_pb2.PlatformSpec(), text


def _compile(tmp_path: Path, *options: str) -> tuple[pipeline_spec_pb2.PipelineSpec, dict]:
    """``goggles compile OPTIONS``: the pipeline spec and the Kubernetes executors."""
    from goggles.cli import main

    package = tmp_path / "p.yaml"
    assert main(["compile", "--output", str(package), *options]) == 0
    spec, *platform = yaml.safe_load_all(package.read_text())
    executors = (platform[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
                 if platform else {})
    return json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec()), executors


def _task(dag: pipeline_spec_pb2.DagSpec, name: str) -> pipeline_spec_pb2.PipelineTaskSpec:
    assert name in dag.tasks, f"no task {name!r}; tasks are {sorted(dag.tasks)}"
    return dag.tasks[name]


def _loop(spec: pipeline_spec_pb2.PipelineSpec,
          dag: pipeline_spec_pb2.DagSpec | None = None,
          ) -> tuple[str, pipeline_spec_pb2.ComponentSpec]:
    """The one ``dsl.ParallelFor`` of ``dag`` (default: the root's, the affinity shards')."""
    dag = dag if dag is not None else spec.root.dag
    loops = [name for name, task in dag.tasks.items() if task.WhichOneof("iterator")]
    assert len(loops) == 1, f"expected one ParallelFor, found {loops}"
    component = dag.tasks[loops[0]].component_ref.name
    assert component in spec.components
    return loops[0], spec.components[component]


def _dag_of(spec: pipeline_spec_pb2.PipelineSpec, task: str) -> pipeline_spec_pb2.DagSpec:
    """The DAG that holds the task named ``task`` (task names of components are unique)."""
    dags = [spec.root.dag] + [c.dag for c in spec.components.values()
                              if c.WhichOneof("implementation") == "dag"]
    found = [dag for dag in dags if task in dag.tasks]
    assert len(found) == 1, f"task {task!r} is in {len(found)} DAGs"
    return found[0]


def _features_dag(spec: pipeline_spec_pb2.PipelineSpec) -> pipeline_spec_pb2.DagSpec:
    """The extraction, gather and affinity sub-pipeline's DAG."""
    task = _task(spec.root.dag, "features-and-affinity")
    return spec.components[task.component_ref.name].dag


def _extract_loop(spec: pipeline_spec_pb2.PipelineSpec,
                  ) -> tuple[pipeline_spec_pb2.PipelineTaskSpec, str,
                             pipeline_spec_pb2.ComponentSpec]:
    """The extraction sub-pipeline's task and its ParallelFor (name, body)."""
    parts = _task(_features_dag(spec), "extract-parts")
    name, body = _loop(spec, spec.components[parts.component_ref.name].dag)
    return parts, name, body


def _executor(spec: pipeline_spec_pb2.PipelineSpec, component: str) -> dict:
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    label = spec.components[component].executor_label
    assert label in executors, label
    return dict(executors[label]["container"])


def _all_tasks(spec: pipeline_spec_pb2.PipelineSpec,
               ) -> dict[str, pipeline_spec_pb2.PipelineTaskSpec]:
    tasks = dict(spec.root.dag.tasks)
    for component in spec.components.values():
        if component.WhichOneof("implementation") == "dag":
            tasks.update(component.dag.tasks)
    return tasks


def test_six_stage_components_the_shard_plan_and_the_no_train_branch(compiled) -> None:
    spec, _, _ = compiled
    for stage, component in STAGES.items():
        assert component in spec.components, f"{stage}: no {component}"
        assert spec.components[component].WhichOneof("implementation") == "executor_label"
    leaves = {name for name, c in spec.components.items()
              if c.WhichOneof("implementation") == "executor_label"}
    assert leaves == set(STAGES.values()) | FANNED_OUT_INFER | {
        "comp-plan-shards", "comp-list-source", "comp-no-train"}
    assert spec.pipeline_info.name == "goggles"


def test_extraction_fans_out_over_the_planned_shard_ids(compiled) -> None:
    """One extract task per shard (a ``dsl.ParallelFor`` in the extraction sub-pipeline, fed
    the plan's shard ids); the gather step reads the parts' summaries, never their maps."""
    spec, _, _ = compiled
    parts, loop_name, body = _extract_loop(spec)
    features = _task(spec.root.dag, "features-and-affinity")
    assert {"plan-shards", "join-manifest"} <= set(features.dependent_tasks)
    shard_ids = features.inputs.parameters["shard_ids"].task_output_parameter
    assert (shard_ids.producer_task, shard_ids.output_parameter_key) == (
        "plan-shards", "shard_ids")
    # every later task gets the plan's shard count (num_shards, or its choice for 0), not the
    # pipeline's parameter
    for task in (features, _task(spec.root.dag, "evaluate")):
        count = task.inputs.parameters["num_shards"].task_output_parameter
        assert (count.producer_task, count.output_parameter_key) == ("plan-shards", "num_shards")
    assert parts.inputs.parameters["shard_ids"].component_input_parameter == "shard_ids"
    dag = spec.components[parts.component_ref.name].dag
    loop_task = dag.tasks[loop_name]
    assert loop_task.parameter_iterator.items.input_parameter == "pipelinechannel--shard_ids"
    assert loop_task.iterator_policy.parallelism_limit >= 2
    part = _task(body.dag, "extract-part")
    assert part.component_ref.name == STAGES["extract"]
    assert part.inputs.parameters["shard_id"].component_input_parameter == \
        loop_task.parameter_iterator.item_input
    assert set(part.inputs.artifacts) == {"manifest"}
    outputs = spec.components[parts.component_ref.name].output_definitions.artifacts
    assert set(outputs) == {"maps", "summaries", "descriptors"}
    assert all(output.is_artifact_list for output in outputs.values())
    gather = _task(_features_dag(spec), "gather-features")
    assert set(gather.inputs.artifacts) == {"summaries"}
    source = gather.inputs.artifacts["summaries"].task_output_artifact
    assert (source.producer_task, source.output_artifact_key) == ("extract-parts", "summaries")
    # the plan's shard count, which reads the ingest manifest
    plan = _task(spec.root.dag, "plan-shards")
    assert plan.inputs.parameters["num_shards"].component_input_parameter == "num_shards"
    # and the dev labels, checked against the accepted images before any extraction
    assert plan.inputs.parameters["dev_labels_uri"].component_input_parameter == \
        "dev_labels_uri"
    listing = _task(spec.root.dag, "list-source")
    assert listing.inputs.parameters["verify"].component_input_parameter == "verify"


def test_each_affinity_task_reads_only_its_own_parts_maps(compiled) -> None:
    """The affinity loop iterates over the parts' maps: a shard task's inputs are one part's
    maps (the loop item), the gathered prototypes and the plan's sample, nothing else."""
    spec, _, _ = compiled
    dag = _features_dag(spec)
    loop_name, loop = _loop(spec, dag)
    loop_task = dag.tasks[loop_name]
    assert loop_task.artifact_iterator.items.input_artifact == \
        "pipelinechannel--extract-parts-maps"
    assert {"extract-parts", "gather-features"} <= set(loop_task.dependent_tasks)
    assert loop_task.iterator_policy.parallelism_limit >= 2
    shard = _task(loop.dag, "affinity-shard")
    assert shard.component_ref.name == STAGES["affinity"]
    assert set(shard.inputs.artifacts) == {"maps", "prototypes", "sample"}
    assert shard.inputs.artifacts["maps"].component_input_artifact == \
        loop_task.artifact_iterator.item_input
    assert shard.inputs.artifacts["prototypes"].component_input_artifact == \
        "pipelinechannel--gather-features-prototypes"
    # no other task anywhere takes the parts' maps
    readers = [name for name, task in _all_tasks(spec).items()
               for artifact in task.inputs.artifacts.values()
               if "maps" in artifact.task_output_artifact.output_artifact_key
               or "extract-parts-maps" in artifact.component_input_artifact]
    # the affinity loop (which hands its item on) and its shard task
    assert sorted(readers) == ["affinity-shard", loop_name], readers


def test_infer_evaluate_and_train_read_no_filter_maps(compiled) -> None:
    """Train takes the gathered features (descriptors, logits); infer's fit its sample's parts,
    its label tasks one shard each; evaluate the prototypes and the sample: none is given a
    part's maps, and infer not even the gathered features."""
    spec, _, _ = compiled
    fit = _task(spec.root.dag, "infer-fit")
    assert set(fit.inputs.artifacts) == {"sample", "sample_parts", "prototypes"}
    label = _task(_dag_of(spec, "label-shard"), "label-shard")
    assert set(label.inputs.artifacts) == {"fit", "affinity"}
    train = _task(_dag_of(spec, "train"), "train")
    assert train.inputs.artifacts["features"].component_input_artifact == \
        "pipelinechannel--features-and-affinity-features"
    evaluate = _task(spec.root.dag, "evaluate")
    assert "features" not in evaluate.inputs.artifacts
    gather_outputs = spec.components[STAGES["gather"]].output_definitions.artifacts
    assert set(gather_outputs) == {"features", "prototypes"}


def test_no_task_reads_every_shard_of_a(compiled) -> None:
    """Infer's fit reads the sample's parts (graph EM's sample; every image only for the other
    methods), each label task the shard that is its loop item, evaluate the sample: no task is
    given the collected shards of A."""
    spec, _, _ = compiled
    leaves = {name: task for name, task in _all_tasks(spec).items()
              if spec.components[task.component_ref.name].WhichOneof("implementation")
              == "executor_label"}
    readers = {name: key for name, task in leaves.items()
               for key, artifact in task.inputs.artifacts.items()
               if artifact.component_input_artifact.endswith("features-and-affinity-affinity")
               or artifact.task_output_artifact.output_artifact_key == "affinity"}
    assert readers == {}, readers
    loop_name, loop = _loop(spec)
    loop_task = spec.root.dag.tasks[loop_name]
    assert loop_task.artifact_iterator.items.input_artifact == \
        "pipelinechannel--features-and-affinity-affinity"
    label = _task(loop.dag, "label-shard")
    assert label.inputs.artifacts["affinity"].component_input_artifact == \
        loop_task.artifact_iterator.item_input
    gather = _task(spec.root.dag, "gather-labels")
    assert loop_name in gather.dependent_tasks and "infer-fit" in gather.dependent_tasks
    evaluate = _task(spec.root.dag, "evaluate")
    source = evaluate.inputs.artifacts["affinity_sample"].task_output_artifact
    assert (source.producer_task, source.output_artifact_key) == ("features-and-affinity",
                                                                  "view_parts")
    fit = _task(spec.root.dag, "infer-fit")
    source = fit.inputs.artifacts["sample_parts"].task_output_artifact
    assert (source.producer_task, source.output_artifact_key) == ("features-and-affinity",
                                                                  "sample_parts")
    assert fit.inputs.parameters["method"].component_input_parameter == "method"


def test_train_is_an_if_branch_after_infer_whose_scores_evaluate_records(compiled) -> None:
    """``dsl.If(train == True)`` runs the train task on infer's labels, ``dsl.Else`` the
    no-train task; a ``dsl.OneOf`` of their outputs feeds evaluate's ``end_model`` and the
    pipeline's ``model_uri``."""
    spec, _, _ = compiled
    groups = [name for name, task in spec.root.dag.tasks.items()
              if spec.components[task.component_ref.name].WhichOneof("implementation") == "dag"
              and name.startswith("condition-branches")
              and any("train" in spec.components[b.component_ref.name].dag.tasks
                      for b in spec.components[task.component_ref.name].dag.tasks.values())]
    assert len(groups) == 1, groups
    group = spec.root.dag.tasks[groups[0]]
    assert "gather-labels" in group.dependent_tasks
    branches = spec.components[group.component_ref.name].dag.tasks
    conditions = {}
    for branch in branches.values():
        inner = spec.components[branch.component_ref.name].dag.tasks
        assert len(inner) == 1
        conditions[next(iter(inner))] = branch.trigger_policy.condition
    assert conditions["train"] == "inputs.parameter_values['pipelinechannel--train'] == true"
    assert conditions["no-train"].startswith("!(")
    train = next(t for b in branches.values()
                 for n, t in spec.components[b.component_ref.name].dag.tasks.items()
                 if n == "train")
    for artifact in ("manifest", "features", "labels", "inference"):
        assert artifact in train.inputs.artifacts, artifact
    assert spec.components[STAGES["train"]].output_definitions.artifacts["model"] \
        .artifact_type.schema_title == "system.Model"
    evaluate = _task(spec.root.dag, "evaluate")
    assert groups[0] in evaluate.dependent_tasks
    source = evaluate.inputs.parameters["end_model"].task_output_parameter
    assert source.producer_task == groups[0]
    output = spec.root.dag.outputs.parameters["model_uri"].value_from_parameter
    assert output.producer_subtask == groups[0]


def test_only_extract_asks_for_a_gpu_and_no_node_selector_by_default(compiled) -> None:
    """A stock GKE/EKS GPU node has no ``nvidia.com/gpu.present`` label: the default compile
    asks for the GPU only, with no node selector or toleration (no platform spec at all)."""
    spec, platform, text = compiled
    for stage, component in STAGES.items():
        resources = _executor(spec, component).get("resources", {})
        accelerator = resources.get("accelerator", {})
        if stage == "extract":
            assert accelerator.get("resourceType") == "nvidia.com/gpu"
            assert accelerator.get("resourceCount") == "1"
        else:
            assert not accelerator, f"{stage} should not ask for an accelerator"
    assert "kubernetes" not in platform.platforms
    assert "nodeSelector" not in text and "gpu.present" not in text


def test_gpu_node_selector_and_toleration_when_asked(tmp_path: Path) -> None:
    _, executors = _compile(tmp_path, "--gpu-node-selector", "cloud.google.com/gke-accelerator"
                            "=nvidia-l4", "--gpu-toleration")
    assert set(executors) == {"exec-extract-part"}
    extract = executors["exec-extract-part"]
    assert extract["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert extract["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                       "effect": "NoSchedule"}]


def test_cpu_extraction_asks_for_no_gpu_and_runs_the_cpu_image(tmp_path: Path) -> None:
    spec, executors = _compile(tmp_path, "--extract-device", "cpu")
    assert executors == {}
    for component in STAGES.values():
        container = _executor(spec, component)
        assert "accelerator" not in container.get("resources", {}), component
        assert not container["image"].endswith("-gpu"), component


def test_image_repository_and_tag_reach_every_executor(tmp_path: Path) -> None:
    """``--image-repository R --image-tag T``: every task runs R:T, extract R:T-gpu, and every
    pod pulls with the pull secret; the code's ghcr.io names appear nowhere."""
    spec, executors = _compile(tmp_path, "--image-repository", "registry.example.com/ml/gg",
                               "--image-tag", "2024.1", "--image-pull-secret", "regcred")
    images = {label: e["container"]["image"]
              for label, e in json_format.MessageToDict(spec.deployment_spec)["executors"].items()}
    assert images.pop("exec-extract-part") == "registry.example.com/ml/gg:2024.1-gpu"
    assert images and set(images.values()) == {"registry.example.com/ml/gg:2024.1"}
    assert set(executors) == {"exec-extract-part", *images}
    for label, settings in executors.items():
        assert [s["secretName"] for s in settings["imagePullSecret"]] == ["regcred"], label
    assert "ghcr.io" not in json_format.MessageToJson(spec)


@pytest.mark.parametrize("options, message", [
    (["--image-repository", "ghcr.io/x/goggles:1.0"], "without a tag"),
    (["--image-tag", "a tag"], "is not a Docker tag"),
    (["--gpu-node-selector", "nvidia"], "is not KEY=VALUE"),
    (["--extract-device", "cpu", "--gpu-toleration"], "would put a CPU task on GPU nodes"),
    (["--image-pull-secret", "Reg_Cred"], "is not a Kubernetes Secret name"),
])
def test_bad_cluster_settings_are_refused(tmp_path: Path, capsys, options, message) -> None:
    from goggles.cli import main

    assert main(["compile", "--output", str(tmp_path / "p.yaml"), *options]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "p.yaml").exists()


def test_every_parameter_has_its_declared_description(compiled) -> None:
    """The Kubeflow UI's run form shows each parameter's description: the declared help."""
    spec, _, _ = compiled
    for name, definition in spec.root.input_definitions.parameters.items():
        assert definition.description == parameters.spec(name).help, name


def test_retries_with_backoff_on_extract_and_shards_only(compiled) -> None:
    spec, _, _ = compiled
    for name in ("ingest-part", "extract-part", "affinity-shard", "label-shard"):
        task = _task(_dag_of(spec, name), name)
        assert task.retry_policy.max_retry_count >= 2, name
        assert task.retry_policy.backoff_duration.seconds > 0, name
        assert task.retry_policy.backoff_factor > 1, name
    for name in ("join-manifest", "plan-shards", "gather-features", "infer-fit",
                 "gather-labels", "evaluate"):
        assert _task(_dag_of(spec, name), name).retry_policy.max_retry_count == 0, name


def test_every_task_has_a_display_name_and_caching(compiled) -> None:
    spec, _, _ = compiled
    tasks = _all_tasks(spec)
    # list, the ingest sub-pipeline (its loop and task), the manifest's join, plan, the
    # features sub-pipeline (its extraction sub-pipeline with its loop and extract task,
    # gather, the affinity loop and its shard task), infer's fit, its label loop and task, its
    # gather, the train If/Else group (train; no-train), evaluate: every loop has its own
    # number (goggles.kubeflow.pipeline.LOOP_NUMBERS), so every task name is unique
    dags = [spec.root.dag] + [c.dag for c in spec.components.values()
                              if c.WhichOneof("implementation") == "dag"]
    assert sum(len(dag.tasks) for dag in dags) == 23
    assert len(tasks) == 23
    for name, task in tasks.items():
        if name.startswith("condition-branches-"):
            continue  # the If/Else pair's group, which kfp makes and names itself
        assert task.task_info.name and task.task_info.name != name, \
            f"task {name!r} has no display name"
        component = spec.components[task.component_ref.name]
        # not a loop or branch, nor the listing (never cached)
        if component.WhichOneof("implementation") == "executor_label" and name != "list-source":
            assert task.caching_options.enable_cache, f"task {name!r} is not cached"


def _upstream(tasks: dict[str, pipeline_spec_pb2.PipelineTaskSpec], name: str) -> set[str]:
    """Every task ``name`` depends on, directly or not."""
    seen: set[str] = set()
    todo = list(tasks[name].dependent_tasks)
    while todo:
        upstream = todo.pop()
        if upstream not in seen:
            seen.add(upstream)
            todo += list(tasks[upstream].dependent_tasks) if upstream in tasks else []
    return seen


def test_no_task_reading_the_source_is_cached_without_an_uncached_listing_first(compiled):
    """KFP caches a task by its inputs: a task given only ``source_uri`` would answer a grown
    bucket from the cache. The listing task runs every time, uncached, and its digest of the
    source is an input of ingest; every cached task that takes the source comes after it."""
    spec, _, _ = compiled
    tasks = _all_tasks(spec)
    listing = _task(spec.root.dag, "list-source")
    assert not listing.caching_options.enable_cache
    assert listing.inputs.parameters["source_uri"].component_input_parameter == "source_uri"
    ingest = _task(_dag_of(spec, "ingest-part"), "ingest-part")
    assert ingest.inputs.parameters["source_fingerprint"].component_input_parameter == \
        "pipelinechannel--source_fingerprint"
    parts = _task(spec.root.dag, "ingest-parts")
    fingerprint = parts.inputs.parameters["source_fingerprint"].task_output_parameter
    assert (fingerprint.producer_task, fingerprint.output_parameter_key) == ("list-source",
                                                                             "fingerprint")
    items = parts.inputs.parameters["shard_ids"].task_output_parameter
    assert (items.producer_task, items.output_parameter_key) == ("list-source", "shard_ids")
    readers = [name for name, task in tasks.items()
               if any(p.component_input_parameter == "source_uri"
                      for p in task.inputs.parameters.values())]
    assert {"list-source", "ingest-parts", "evaluate"} <= set(readers)
    for name in readers:
        if tasks[name].caching_options.enable_cache:
            assert "list-source" in _upstream(tasks, name), f"{name} is cached on the URI alone"


def test_every_stage_requests_cpu_and_memory_and_runs_the_project_image(compiled) -> None:
    spec, _, text = compiled
    for component in [*STAGES.values(), "comp-plan-shards", "comp-no-train",
                      "comp-join-manifest"]:
        container = _executor(spec, component)
        resources = container.get("resources", {})
        assert resources.get("resourceCpuRequest"), component
        assert resources.get("resourceMemoryRequest"), component
        assert resources.get("resourceMemoryLimit"), component
        assert container["image"].startswith("ghcr.io/goggles-project/goggles:"
                                             f"{goggles.__version__}"), container["image"]
        command = " ".join(container.get("command", []) + container.get("args", []))
        assert "pip install" not in command, f"{component} would pip install at start"
    assert "-gpu" in _executor(spec, STAGES["extract"])["image"]
    assert "pip install" not in text


def test_parameters_are_typed_with_literal_defaults(compiled) -> None:
    """The compiled pipeline's parameters are the declaration's (goggles.parameters), with its
    defaults spelled out literally in pipeline.py."""
    spec, _, _ = compiled
    parameters = spec.root.input_definitions.parameters
    expected = {name: default(name) for name in names(pipeline=True)}
    assert expected["num_shards"] == 0 and expected["method"] == "graph-em"
    assert set(parameters) == set(expected)
    for name, value in expected.items():
        definition = parameters[name]
        assert definition.HasField("default_value"), name
        if isinstance(value, str):
            assert definition.parameter_type == ParameterType.STRING, name
            assert definition.default_value.string_value == value, name
        elif isinstance(value, bool):
            assert definition.parameter_type == ParameterType.BOOLEAN, name
            assert definition.default_value.bool_value == value, name
        else:
            assert definition.parameter_type == ParameterType.NUMBER_INTEGER, name
            assert definition.default_value.number_value == value, name


def test_the_pipeline_outputs_the_design_artifacts(compiled) -> None:
    spec, _, _ = compiled
    outputs = spec.root.output_definitions.artifacts
    assert set(outputs) == {"manifest", "features", "prototypes", "labels", "inference",
                            "metrics", "report"}
    assert set(spec.root.output_definitions.parameters) == {"model_uri"}
    assert outputs["report"].artifact_type.schema_title == "system.HTML"
    evaluate_outputs = spec.components[STAGES["evaluate"]].output_definitions.artifacts
    kinds = {name: a.artifact_type.schema_title for name, a in evaluate_outputs.items()}
    assert kinds == {"metrics_json": "system.Artifact", "report": "system.HTML",
                     "metrics": "system.Metrics", "confusion": "system.ClassificationMetrics",
                     "summary": "system.Markdown"}


def test_compiling_reads_nothing_from_the_environment(tmp_path: Path) -> None:
    """Two compilations under different environments give the same package."""
    packages = []
    for index, env in enumerate(({"PATH": "/usr/bin:/bin"},
                                 {"PATH": "/usr/bin:/bin", "GOGGLES_BACKBONE": "mobilenet_v2",
                                  "KF_PIPELINES_ENDPOINT": "http://elsewhere"})):
        if "PYTHONPATH" in os.environ:  # a checkout that is not the installed one
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        target = tmp_path / f"p{index}.yaml"
        done = subprocess.run([sys.executable, "pipeline.py", "--output", str(target)],
                              cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        packages.append(target.read_text())
    assert packages[0] == packages[1]


def test_the_top_level_pipeline_and_components_are_the_packages() -> None:
    """``pipeline.py`` and ``components/`` at the top of the repository are the files the
    installed package carries (goggles/kubeflow), so a checkout and a wheel run one DAG."""
    assert (ROOT / "pipeline.py").resolve() == Path(kubeflow_pipeline.__file__).resolve()
    assert (ROOT / "components").resolve() == \
        Path(kubeflow_pipeline.__file__).resolve().parent / "components"
    assert kubeflow_pipeline.goggles_pipeline.name == "goggles"
