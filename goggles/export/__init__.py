"""Exporting a run's labels for the tools that come next (``goggles export``).

* :mod:`~goggles.export.core` — :func:`export_labels`: the checks, the confidence filter and
  ``export.json``;
* :mod:`~goggles.export.writers` — torchvision's ImageFolder tree, Hugging Face's
  ``imagefolder`` layout, CSV and JSON Lines;
* :mod:`~goggles.export.labelstudio` — Label Studio pre-annotations and labeling config;
* :mod:`~goggles.export.naming` — safe, distinct folder and file names.

This package sits beside ingest and features: it imports only :mod:`goggles.io` and the base.
"""

from goggles.export.core import FORMATS, ExportSummary, export_labels

__all__ = ["FORMATS", "ExportSummary", "export_labels"]
