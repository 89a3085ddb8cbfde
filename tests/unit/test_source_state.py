"""What a rerun trusts about a local source (goggles.io.source_state): unchanged metadata is
trusted, a same-size file whose ctime or inode moved is re-hashed, and the listing task's
digest moves with a rewrite whose mtime was set back."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from goggles.io import listing, source_state
from goggles.io.source_state import file_sha256


def _listed(root: Path) -> list[listing.ListedFile]:
    return listing.list_files(str(root), (".bin",))


def _record(root: Path) -> source_state.Recorded:
    files = _listed(root)
    manifest = pa.table({"uri": [f.uri for f in files],
                         "sha256": [file_sha256(f.uri) for f in files]})
    return source_state.record(files, manifest)


def _rewrite_keeping_mtime(path: Path, data: bytes) -> None:
    before = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_metadata_first_content_where_metadata_could_lie(tmp_path: Path) -> None:
    """``below=0``: a source too large to hash on every rerun, where metadata is trusted."""
    for name in ("a", "b"):
        (tmp_path / f"{name}.bin").write_bytes(name.encode() * 100)
    recorded = _record(tmp_path)

    def change(**options: object) -> str | None:
        return source_state.first_change(_listed(tmp_path), recorded, **{"below": 0, **options})

    assert change() is None and change(verify=True) is None and change(below=2**20) is None
    assert source_state.first_change(_listed(tmp_path), None) == "no record of the source"
    (tmp_path / "a.bin").chmod(0o600)  # ctime moved, content the same: re-hashed, unchanged
    assert change() is None
    os.utime(tmp_path / "a.bin")  # touched: new mtime, same bytes → re-hashed, unchanged
    assert change() is None
    _rewrite_keeping_mtime(tmp_path / "b.bin", b"c" * 100)  # same size, mtime set back
    assert change() == "b.bin has new content"
    (tmp_path / "b.bin").write_bytes(b"c" * 101)
    assert change() == "b.bin changed size"
    (tmp_path / "b.bin").write_bytes(b"b" * 100)
    (tmp_path / "c.bin").write_bytes(b"c")
    assert change() == "3 files listed, 2 recorded"


def test_the_listing_digest_moves_with_a_rewrite_whose_mtime_was_set_back(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"a" * 100)
    before = source_state.fingerprint_entries(_listed(tmp_path), below=0)
    assert not before[0][2].startswith("sha256:")  # a large source: metadata
    verified = source_state.fingerprint_entries(_listed(tmp_path), verify=True, below=0)
    assert source_state.fingerprint_entries(_listed(tmp_path)) == verified  # a small one
    assert verified[0][2] == "sha256:" + file_sha256(str(tmp_path / "a.bin"))
    _rewrite_keeping_mtime(tmp_path / "a.bin", b"b" * 100)
    assert _listed(tmp_path)[0].version == str((tmp_path / "a.bin").stat().st_mtime_ns)
    assert source_state.fingerprint_entries(_listed(tmp_path), below=0) != before
    assert source_state.fingerprint_entries(_listed(tmp_path), verify=True) != verified
    _rewrite_keeping_mtime(tmp_path / "a.bin", b"a" * 100)  # the old bytes back
    assert source_state.fingerprint_entries(_listed(tmp_path), verify=True) == verified
    assert source_state.fingerprint_entries(_listed(tmp_path), below=0) != before  # ctime
