"""The ingest component: list, decode and validate the images under a URI."""

# No `from __future__ import annotations` in component modules: kfp reads the real annotations.

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def ingest(source_uri: str, manifest: Output[Dataset]) -> None:
    """Write the manifest of the images under ``source_uri`` (:func:`goggles.steps.run_ingest`).

    Parameters
    ----------
    source_uri : folder or bucket prefix of images (path, file://, gs://, s3://); first-level
        folders are read as ground-truth labels.
    manifest : Parquet, one row per listed file (DESIGN.md's manifest contract); its metadata
        holds ``n_listed``, ``n_images``, ``n_rejected`` and the stage's ``seconds``.
    """
    import time

    import goggles
    from goggles import steps
    from goggles.config import IngestConfig

    if not source_uri:
        raise ValueError("source_uri is empty: pass the folder or bucket prefix of the images, "
                         "e.g. source_uri=gs://my-bucket/images")
    start = time.perf_counter()
    counts = steps.run_ingest(IngestConfig(), source_uri, manifest.path)
    manifest.metadata.update(counts)
    manifest.metadata.update({"format": "parquet", "source_uri": source_uri,
                              "goggles_version": goggles.__version__,
                              "seconds": round(time.perf_counter() - start, 3)})
