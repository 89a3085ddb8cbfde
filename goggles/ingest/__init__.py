"""Ingest: list the image files under a URI, decode and validate each, write the manifest
(:mod:`~goggles.ingest.manifest`, configured by :mod:`~goggles.ingest.config`)."""
