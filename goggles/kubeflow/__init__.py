"""Kubeflow Pipelines: the components (:mod:`~goggles.kubeflow.components`), the DAG that
composes them (:mod:`~goggles.kubeflow.pipeline`; the repository's ``pipeline.py`` and
``components/`` are these files), kfp's local and docker runners (:mod:`~goggles.kubeflow.runner`)
and a cluster's client: compile, submit, schedule (:mod:`~goggles.kubeflow.cluster`).

The only package of goggles that imports kfp (with :mod:`goggles.cli`, which calls it).
"""
