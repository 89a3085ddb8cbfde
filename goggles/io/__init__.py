"""Storage and the artifacts the stages exchange.

* :mod:`~goggles.io.storage` — every read and write of a URI (local, memory://, gs://, s3://):
  atomic commits, retries, Parquet, tensors, JSON; :mod:`~goggles.io.uris` its pure URI
  helpers, :mod:`~goggles.io.listing` folder listings, :mod:`~goggles.io.retries` and
  :mod:`~goggles.io.concurrency` what it is built on.
* :mod:`~goggles.io.artifacts` — the contracts of the artifacts (manifest, features, prototypes,
  affinity shards, labels, inference state): schemas, readers and writers.
* :mod:`~goggles.io.blocks` — the affinity matrix as row blocks, in memory or streamed.
* :mod:`~goggles.io.images` — decoding an image file safely.
* :mod:`~goggles.io.resume` — records of finished stages, for crash-resume.
* :mod:`~goggles.io.transfer` — copying and linking whole objects (exports).

This layer imports only the base (:mod:`goggles.config`, :mod:`goggles.parameters`).
"""
