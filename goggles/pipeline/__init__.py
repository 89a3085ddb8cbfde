"""The pipeline, runner-independent: one function per stage (:mod:`~goggles.pipeline.stages`),
what every runner does around them (:mod:`~goggles.pipeline.wiring`: checks before any work,
the run's record, metrics and report), and the in-process runner
(:mod:`~goggles.pipeline.inprocess`). The Kubeflow definition and its runners are
:mod:`goggles.kubeflow`."""
