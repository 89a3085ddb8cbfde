"""Class inference (paper §4): probabilistic labels [N, K] from the affinity matrix A [N, M].

* :mod:`~goggles.inference.registry` — the methods by ``--method`` name, and :func:`fit_method`;
* :mod:`~goggles.inference.base` — the interface every method implements and the fitted
  attributes it leaves;
* the methods: :mod:`~goggles.inference.graph_em` (the default; its graph in
  :mod:`~goggles.inference.graph`), :mod:`~goggles.inference.paper_em` (the paper's EM, its
  k-means start alone, its random start; the likelihood in :mod:`~goggles.inference.likelihood`),
  :mod:`~goggles.inference.pgm` (AF+PGM) and :mod:`~goggles.inference.imagenet` (the backbone's
  classifier);
* :mod:`~goggles.inference.summary` — what a fit leaves for the report and ``inference.json``;
* :mod:`~goggles.inference.config` — :class:`~goggles.inference.config.InferConfig`.
"""
