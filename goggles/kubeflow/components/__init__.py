"""Kubeflow Pipelines v2 components, one per stage, each a thin wrapper around
:mod:`goggles.pipeline.stages`: build the stage's config (:func:`goggles.pipeline.wiring.
stage_config`), call one function, record metadata.

They are lightweight Python components whose imports happen inside the function, run in the
project image (:mod:`goggles.kubeflow.components.image`) with ``install_kfp_package=False``, so
a task starts without any ``pip install``. :mod:`goggles.kubeflow.pipeline` composes them and
chains the task settings.
"""

from goggles.kubeflow.components.affinity import affinity_shard
from goggles.kubeflow.components.evaluate import evaluate
from goggles.kubeflow.components.extract import extract_part, gather_features
from goggles.kubeflow.components.fingerprint import list_source
from goggles.kubeflow.components.image import BASE_IMAGE, GPU_IMAGE, IMAGES
from goggles.kubeflow.components.infer import gather_labels, infer_fit, label_shard
from goggles.kubeflow.components.ingest import ingest_part, join_manifest
from goggles.kubeflow.components.plan import plan_shards
from goggles.kubeflow.components.train import no_train, train

STAGES = {"ingest": ingest_part, "extract": extract_part, "gather": gather_features,
          "affinity": affinity_shard, "infer": infer_fit, "train": train, "evaluate": evaluate}
"""The stage components by stage name (``plan_shards`` is the fan-outs' helper,
``list_source`` the uncached listing that keys ingest's cache, ``no_train`` the train branch's
``dsl.Else``; infer fans out as ``infer_fit``, then ``label_shard`` per shard and
``gather_labels``)."""

__all__ = ["BASE_IMAGE", "GPU_IMAGE", "IMAGES", "STAGES", "affinity_shard", "evaluate",
           "extract_part", "gather_features", "gather_labels", "infer_fit", "ingest_part",
           "join_manifest", "label_shard", "list_source", "no_train", "plan_shards", "train"]
