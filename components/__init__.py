"""Kubeflow Pipelines v2 components, one per stage, each a thin wrapper around
:mod:`goggles.steps`: build the stage's config, call one function, record metadata.

They are lightweight Python components whose imports happen inside the function, run in the
project image (:mod:`components.image`) with ``install_kfp_package=False``, so a task starts
without any ``pip install``. ``pipeline.py`` composes them and chains the task settings.
"""

from components.affinity import affinity_shard
from components.evaluate import evaluate
from components.extract import extract
from components.image import BASE_IMAGE, GPU_IMAGE, IMAGES
from components.infer import infer
from components.ingest import ingest
from components.plan import plan_shards

STAGES = {"ingest": ingest, "extract": extract, "affinity": affinity_shard, "infer": infer,
          "evaluate": evaluate}
"""The five stage components by stage name (``plan_shards`` is the fan-out's helper)."""

__all__ = ["BASE_IMAGE", "GPU_IMAGE", "IMAGES", "STAGES", "affinity_shard", "evaluate", "extract",
           "infer", "ingest", "plan_shards"]
