"""The source listing's digest (goggles.pipeline.stages.source_fingerprint): the uncached first
task of the Kubeflow pipeline, whose output keys ingest's cache, so it must change exactly when
the files ingest would read do."""

from __future__ import annotations

from pathlib import Path

from goggles.ingest.config import IngestConfig
from goggles.pipeline import stages
from tests.conftest import small_source


def test_the_source_digest_changes_exactly_when_the_source_does(tmp_path: Path) -> None:
    import os

    source = small_source(tmp_path / "source", 3, size=16, bad=False)
    (source / "notes.txt").write_text("not an image")

    def digest() -> str:
        return stages.source_fingerprint(IngestConfig(), str(source))["fingerprint"]

    first = digest()
    assert first.startswith("sha256:") and digest() == first
    (source / "notes.txt").write_text("still not an image")  # not listed: no change
    assert digest() == first
    image = next(source.rglob("*.png"))
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: same bytes
    assert digest() == first  # a small source is keyed by content (source_state.hash_all)
    image.write_bytes(image.read_bytes() + b"\0")  # rewritten in place
    rewritten = digest()
    assert rewritten != first
    (source / "b" / "new.png").write_bytes(image.read_bytes())  # grown
    grown = digest()
    assert grown not in (first, rewritten)
    (source / "b" / "new.png").unlink()  # shrunk back
    assert digest() == rewritten
    assert stages.source_fingerprint(IngestConfig(follow_symlinks=True), str(source)) \
        ["fingerprint"] != rewritten  # the ingest settings are part of the digest
