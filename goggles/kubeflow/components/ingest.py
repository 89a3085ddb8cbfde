"""The ingest components: decode and validate the images under a URI, one slice of the listing
per task (``ingest_part``), then the manifest joined (``join_manifest``)."""

# No `from __future__ import annotations` in component modules: kfp reads the real annotations.

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from goggles.kubeflow.components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def ingest_part(source_uri: str, follow_symlinks: bool, source_fingerprint: str, listing: str,
                shard_id: int, num_parts: int, part: Output[Dataset]) -> None:
    """Validate one slice of the images under ``source_uri``
    (:func:`goggles.pipeline.stages.run_ingest_part`): one task per slice, each reading its
    own files.

    Parameters
    ----------
    source_uri : folder or bucket prefix of images (path, file://, gs://, s3://); first-level
        folders are read as ground-truth labels.
    follow_symlinks : read what symlinks in a local source lead to outside it.
    source_fingerprint : the uncached ``list_source`` task's digest of the source; it is part of
        this task's cache key (and recorded in the metadata), so a changed source is ingested
        again.
    listing, shard_id, num_parts : the listing's digest (a source changed since is refused) and
        which slice of it.
    part : the slice's manifest rows and ``part.json``.
    """
    import time

    from goggles.pipeline import stages
    from goggles.pipeline.wiring import stage_config

    if not source_uri:
        raise ValueError("source_uri is empty: pass the folder or bucket prefix of the images, "
                         "e.g. source_uri=gs://my-bucket/images")
    start = time.perf_counter()
    counts = stages.run_ingest_part(stage_config("ingest", {"follow_symlinks": follow_symlinks}),
                                    source_uri, shard_id, num_parts, listing, part.path)
    part.metadata.update({**counts, "shard_id": shard_id, "num_parts": num_parts,
                          "source_fingerprint": source_fingerprint,
                          "seconds": round(time.perf_counter() - start, 3)})


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def join_manifest(parts: Input[list[Dataset]], source_uri: str,
                  source_fingerprint: str, manifest: Output[Dataset]) -> None:
    """The run's manifest from the ingest parts (:func:`goggles.pipeline.stages.
    run_join_manifest`), as one ingest writes it.

    Parameters
    ----------
    parts : every ingest part, any order.
    source_uri, source_fingerprint : recorded in the metadata.
    manifest : Parquet, one row per listed file (:mod:`goggles.io.artifacts`); its metadata
        holds ``n_listed``, ``n_images``, ``n_rejected`` and the stage's ``seconds``.
    """
    import time

    import goggles
    from goggles.io.uris import redact
    from goggles.pipeline import stages

    start = time.perf_counter()
    counts = stages.run_join_manifest([part.path for part in parts], manifest.path)
    seconds = sum(float(part.metadata.get("seconds", 0.0)) for part in parts)
    manifest.metadata.update(counts)
    manifest.metadata.update({"format": "parquet", "source_uri": redact(source_uri),
                              "source_fingerprint": source_fingerprint,
                              "goggles_version": goggles.__version__,
                              "seconds": round(seconds + time.perf_counter() - start, 3)})
