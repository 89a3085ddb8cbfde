"""The ingest component: list, decode and validate the images under a URI."""

# No `from __future__ import annotations` in component modules: kfp reads the real annotations.

from kfp import dsl
from kfp.dsl import Dataset, Output

from goggles.kubeflow.components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def ingest(source_uri: str, follow_symlinks: bool, source_fingerprint: str,
           manifest: Output[Dataset]) -> None:
    """Write the manifest of the images under ``source_uri``
    (:func:`goggles.pipeline.stages.run_ingest`).

    Parameters
    ----------
    source_uri : folder or bucket prefix of images (path, file://, gs://, s3://); first-level
        folders are read as ground-truth labels.
    follow_symlinks : read what symlinks in a local source lead to outside it.
    source_fingerprint : the uncached ``list_source`` task's digest of the source; it is part of
        this task's cache key (and recorded in the metadata), so a changed source is ingested
        again.
    manifest : Parquet, one row per listed file (:mod:`goggles.io.artifacts`); its metadata
        holds ``n_listed``, ``n_images``, ``n_rejected`` and the stage's ``seconds``.
    """
    import time

    import goggles
    from goggles.io.uris import redact
    from goggles.pipeline import stages
    from goggles.pipeline.wiring import stage_config

    if not source_uri:
        raise ValueError("source_uri is empty: pass the folder or bucket prefix of the images, "
                         "e.g. source_uri=gs://my-bucket/images")
    start = time.perf_counter()
    counts = stages.run_ingest(stage_config("ingest", {"follow_symlinks": follow_symlinks}),
                               source_uri, manifest.path)
    manifest.metadata.update(counts)
    manifest.metadata.update({"format": "parquet", "source_uri": redact(source_uri),
                              "source_fingerprint": source_fingerprint,
                              "goggles_version": goggles.__version__,
                              "seconds": round(time.perf_counter() - start, 3)})
