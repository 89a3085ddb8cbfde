"""The source listing: a digest of the files under the source, taken on every run (never
cached), that keys ingest's cache entry."""

from kfp import dsl

from goggles.kubeflow.components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def list_source(source_uri: str, follow_symlinks: bool, verify: bool = False) -> str:
    """The fingerprint of the images under ``source_uri``
    (:func:`goggles.pipeline.stages.source_fingerprint`): each file's path, size and version
    (a local file's modification and change times and inode, or with ``verify`` its sha256; an
    object's generation or ETag).

    The pipeline runs this task uncached and hands its output to ingest, so KFP's cache key of
    ingest changes exactly when the source does: a grown or rewritten source is ingested again
    (and everything after it recomputed), an unchanged one reuses every cached task.

    Returns
    -------
    ``sha256:<hex>`` of the listing.
    """
    import logging

    from goggles.io.uris import redact
    from goggles.pipeline import stages
    from goggles.pipeline.wiring import stage_config

    if not source_uri:
        raise ValueError("source_uri is empty: pass the folder or bucket prefix of the images, "
                         "e.g. source_uri=gs://my-bucket/images")
    found = stages.source_fingerprint(
        stage_config("ingest", {"follow_symlinks": follow_symlinks, "verify": verify}),
        source_uri)
    logging.getLogger("goggles").info("%s lists %d image files: %s", redact(source_uri),
                                      found["n_files"], found["fingerprint"])
    return str(found["fingerprint"])
