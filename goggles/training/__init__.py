"""Training an end classifier on a run's probabilistic labels, its model artifact, and
labeling new images with a trained run (``goggles run --train``, ``goggles train``,
``goggles apply``; docs/training.md).

* :mod:`goggles.training.head` — the head and the noise-aware loss (eq. 1);
* :mod:`goggles.training.train` — the train stage's work: held-out scores, the final head;
* :mod:`goggles.training.model` — ``OUT/model`` (safetensors + JSON) and :func:`load_model`;
* :mod:`goggles.training.describe` — features of new images, as the extract stage makes them;
* :mod:`goggles.training.labeler` — the fitted affinity labeler (the run's own fit);
* :mod:`goggles.training.apply` — labeling new images with either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from goggles.training.model import EndModel

__all__ = ["load_model"]


def load_model(uri: str) -> EndModel:
    """The end model at ``uri`` (a model folder or a run's output folder):
    :func:`goggles.training.model.load_model`."""
    from goggles.training.model import load_model as load

    return load(uri)
