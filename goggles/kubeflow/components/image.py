"""The container images the components run in, tagged from ``goggles.__version__``.

The images are built from ``docker/`` (CPU and GPU targets, weights baked in). Lightweight
components ship their function's source inside the pipeline spec, so an image needs only the
``goggles`` package (which brings ``kfp``): no ``pip install`` happens when a task starts.
"""

from __future__ import annotations

from goggles import __version__

IMAGE_REPOSITORY = "ghcr.io/goggles-project/goggles"
BASE_IMAGE = f"{IMAGE_REPOSITORY}:{__version__}"
"""CPU image: ingest, plan, affinity, infer, evaluate."""
GPU_IMAGE = f"{IMAGE_REPOSITORY}:{__version__}-gpu"
"""CUDA image: extract (the only task that asks for a GPU)."""

IMAGES = (BASE_IMAGE, GPU_IMAGE)
