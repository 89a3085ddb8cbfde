"""The source listing: a digest of the files under the source, taken on every run (never
cached), that keys ingest's cache entry."""

from typing import NamedTuple

from kfp import dsl

from goggles.kubeflow.components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def list_source(source_uri: str, follow_symlinks: bool, verify: bool = False
                ) -> NamedTuple("Listing", [("fingerprint", str),  # type: ignore[valid-type]  # noqa: UP014
                                            ("listing", str), ("shard_ids", list),
                                            ("num_parts", int)]):
    """The fingerprint of the images under ``source_uri``
    (:func:`goggles.pipeline.stages.source_fingerprint`): each file's path, size and version
    (a local file's modification and change times and inode, or with ``verify`` its sha256; an
    object's generation or ETag).

    The pipeline runs this task uncached and hands its output to ingest, so KFP's cache key of
    ingest changes exactly when the source does: a grown or rewritten source is ingested again
    (and everything after it recomputed), an unchanged one reuses every cached task.

    Returns
    -------
    fingerprint : ``sha256:<hex>`` of the listing.
    listing : the listing's digest the ingest parts check theirs against
        (:func:`goggles.pipeline.stages.listing_digest`).
    shard_ids, num_parts : the ingest parts, one per 10,240 files
        (:func:`goggles.pipeline.stages.ingest_parts`).
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
    parts = stages.ingest_parts(int(found["n_files"]))
    return (str(found["fingerprint"]), str(found["listing"]), list(range(parts)), parts)
