"""Evaluation and the report: how good the labels are and what a person sees of a run.

* :mod:`~goggles.report.evaluation` — accuracy after Hungarian matching of clusters to classes,
  per-class recall, confusion, calibration (ECE, Brier), naming clusters from a dev set;
* :mod:`~goggles.report.page` — ``report.html``, one self-contained page
  (:func:`~goggles.report.page.write_report`), drawn with :mod:`~goggles.report.plots` and
  :mod:`~goggles.report.patches` (the image patch a prototype comes from).
"""
