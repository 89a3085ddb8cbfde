"""goggles.io.storage on local paths and memory:// (the object-store servers are exercised in
tests/integration/test_object_storage.py): round trips, atomic writes, clear errors, folder
listings and leftovers, bounded concurrent reads."""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from goggles.io import listing, retries, storage, transfer


@pytest.fixture(params=["local", "memory"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh folder URI on each kind of store that needs no server."""
    if request.param == "local":
        return str(tmp_path / "store")
    return f"memory://test-storage-{uuid.uuid4().hex[:8]}"


def names_under(uri: str) -> list[str]:
    fs, path = storage.filesystem(uri)
    if storage.is_local(uri):
        return sorted(str(p.relative_to(path)) for p in Path(path).rglob("*") if p.is_file())
    return sorted(p[len(path.rstrip("/")):].lstrip("/") for p in fs.find(path))


def test_round_trips(base: str) -> None:
    table = pa.table({"a": [1, 2, 3], "b": ["x", "y", None]})
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    storage.write_parquet(table, storage.join(base, "t.parquet"))
    storage.write_npy(array, storage.join(base, "deep", "a.npy"))
    storage.write_json({"k": [1, 2]}, storage.join(base, "m.json"))
    storage.write_text("<p>hi</p>", storage.join(base, "r.html"))
    assert storage.read_parquet(storage.join(base, "t.parquet")).equals(table)
    np.testing.assert_array_equal(storage.read_npy(storage.join(base, "deep", "a.npy")), array)
    assert storage.read_json(storage.join(base, "m.json")) == {"k": [1, 2]}
    assert storage.read_bytes(storage.join(base, "r.html")) == b"<p>hi</p>"
    assert names_under(base) == ["deep/a.npy", "m.json", "r.html", "t.parquet"]  # no temporaries


@pytest.mark.parametrize("shape", [(), (0, 3), (5,), (3000, 3000), (3, 70_000), (9, 4, 5)])
def test_npy_stored_and_read_as_another_type(base: str, shape: tuple[int, ...]) -> None:
    """A conversion on write or read gives numpy's own file and array: the same bytes as
    ``np.save`` of the converted array, in one block of rows or several (a large array is
    converted a block of rows at a time, never copied whole)."""
    import io

    rng = np.random.default_rng(0)
    array = rng.normal(size=shape).astype(np.float32)
    uri = storage.join(base, "half.npy")
    storage.write_npy(array, uri, dtype=np.float16)
    expected = io.BytesIO()
    np.save(expected, array.astype(np.float16))
    assert storage.read_bytes(uri) == expected.getvalue()
    back = storage.read_npy(uri, dtype=np.float32)
    assert back.dtype == np.float32 and back.shape == shape
    np.testing.assert_array_equal(back, array.astype(np.float16).astype(np.float32))
    fortran = np.asfortranarray(array.astype(np.float64))  # numpy's reader takes this layout
    storage.write_npy(fortran, uri)
    np.testing.assert_array_equal(storage.read_npy(uri, dtype=np.float32), array)


def test_npy_conversions_hold_one_copy_of_a_large_array(tmp_path: Path) -> None:
    """Converting a 72 MB float32 array to float16 on write and back on read holds the array
    and a block of rows (16 MiB), never a whole converted copy beside it."""
    import tracemalloc

    array = np.ones((6000, 3000), dtype=np.float32)
    uri = str(tmp_path / "big.npy")
    tracemalloc.start()
    try:
        storage.write_npy(array, uri, dtype=np.float16)
        written = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        back = storage.read_npy(uri, dtype=np.float32)
        read = tracemalloc.get_traced_memory()[1] - back.nbytes
    finally:
        tracemalloc.stop()
    # a block is 16 MiB; a whole converted copy would add 36 MB
    assert written < 20 << 20 and read < 20 << 20, (written, read)
    np.testing.assert_array_equal(back, array)


def test_npy_of_objects_is_refused_not_unpickled(tmp_path: Path) -> None:
    """A ``.npy`` of Python objects would run a pickle: refused, with or without a conversion."""
    uri = str(tmp_path / "objects.npy")
    with open(uri, "wb") as handle:
        np.save(handle, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    for dtype in (None, np.float32):
        with pytest.raises(ValueError, match="allow_pickle"):
            storage.read_npy(uri, dtype=dtype)


def test_truncated_npy_read_with_conversion_names_the_file(tmp_path: Path) -> None:
    uri = str(tmp_path / "a.npy")
    storage.write_npy(np.ones((1000, 8), dtype=np.float16), uri)
    Path(uri).write_bytes(Path(uri).read_bytes()[:-10])
    with pytest.raises(storage.StorageError, match="a.npy ends before .* rerun the stage"):
        storage.read_npy(uri, dtype=np.float32)


def test_overwrite_replaces_whole_object(base: str) -> None:
    uri = storage.join(base, "x.bin")
    storage.write_bytes(uri, b"a" * 1000)
    storage.write_bytes(uri, b"short")
    assert storage.read_bytes(uri) == b"short"
    assert names_under(base) == ["x.bin"]


def test_temporary_names_are_hidden_siblings() -> None:
    name = storage.temporary_name("bucket/out/labels.parquet")
    folder, leaf = name.rsplit("/", 1)
    assert folder == "bucket/out" and leaf.startswith(".labels.parquet" + storage.TEMPORARY_TAG)
    assert not name.endswith(".parquet")  # never mistaken for the artifact or listed as one
    assert storage.temporary_name("x.bin") != storage.temporary_name("x.bin")


def test_missing_object_names_the_uri_and_fails_once(base: str) -> None:
    uri = storage.join(base, "nothing", "here.parquet")
    with pytest.raises(storage.MissingObjectError, match="does not exist; check the URI") as info:
        storage.read_parquet(uri)
    assert uri in str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, storage.StorageError)
    assert not storage.exists(uri) and not storage.is_file(uri)


def test_failures_name_the_uri_and_the_fix() -> None:
    uri = "gs://bucket/out/labels.parquet"
    build = storage._give_up("write", uri)
    denied = build(OSError("Forbidden: bucket/out\nno write access"), 1)
    assert isinstance(denied, storage.AccessDeniedError)
    assert uri in str(denied) and "GOOGLE_APPLICATION_CREDENTIALS" in str(denied)
    exhausted = build(ConnectionResetError(errno.ECONNRESET, "reset"), 6)
    assert "after 6 attempts" in str(exhausted) and "GOGGLES_STORAGE_MAX_ATTEMPTS" in str(exhausted)
    assert uri in str(exhausted)
    bug = TypeError("not a storage problem")
    assert build(bug, 1) is bug


def test_transient_errors_are_retried_then_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    previous = storage.set_retry_policy(retries.RetryPolicy(max_attempts=3, initial_delay_s=0))
    try:
        calls = []

        def flaky() -> bytes:
            calls.append(1)
            if len(calls) < 3:
                raise ConnectionResetError(errno.ECONNRESET, "reset by peer")
            return b"ok"

        assert storage.retrying("read", "s3://b/k", flaky) == b"ok" and len(calls) == 3

        def down() -> bytes:
            raise TimeoutError("timed out")

        with pytest.raises(storage.StorageError, match="'s3://b/k': still failing after 3"):
            storage.retrying("read", "s3://b/k", down)
    finally:
        storage.set_retry_policy(previous)


def test_credentials_in_uris_are_refused_and_redacted() -> None:
    with pytest.raises(storage.StorageError, match="credentials in a URI") as info:
        storage.filesystem("s3://AKIAEXAMPLE:SECRETVALUE@bucket/images")
    assert "SECRETVALUE" not in str(info.value) and "AKIAEXAMPLE" not in str(info.value)
    assert storage.redact("gs://user:pw@b/x?token=abc") == "gs://b/x"
    assert storage.redact("/local/a@b/file.jpg") == "/local/a@b/file.jpg"


def test_remove_temporaries_clears_leftovers_only(base: str) -> None:
    folder = storage.join(base, "out")
    storage.write_bytes(storage.join(folder, "keep.json"), b"{}")
    leftover = storage.temporary_name("labels.parquet")
    storage.write_bytes(storage.join(folder, "sub", leftover), b"half")  # as a killed writer
    assert listing.remove_temporaries(folder) == 1
    assert names_under(folder) == ["keep.json"]
    assert listing.remove_temporaries(storage.join(base, "never-written")) == 0


def test_read_many_keeps_order_and_reports_failures_inline(base: str) -> None:
    uris = [storage.join(base, f"{i:02d}.jpg") for i in range(12)]
    for i, uri in enumerate(uris):
        storage.write_bytes(uri, bytes([i]) * (i + 1))
    wanted = uris[:5] + [storage.join(base, "missing.jpg")] + uris[5:]
    results = list(transfer.read_many(wanted, max_concurrency=4))
    assert [uri for uri, _ in results] == wanted
    assert isinstance(results[5][1], storage.MissingObjectError)
    assert [data for _, data in results[:5] + results[6:]] == \
        [bytes([i]) * (i + 1) for i in range(12)]


def test_read_concurrency_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    assert transfer.default_concurrency() == 16
    monkeypatch.setenv("GOGGLES_STORAGE_CONCURRENCY", "3")
    assert transfer.default_concurrency() == 3
    monkeypatch.setenv("GOGGLES_STORAGE_CONCURRENCY", "lots")
    with pytest.raises(ValueError, match="GOGGLES_STORAGE_CONCURRENCY='lots'"):
        transfer.default_concurrency()


def test_listing_a_bucket_like_store(base: str) -> None:
    for name in ["b/2.jpg", "a/1.JPG", "a/notes.txt", "b/deeper/3.png", "top.jpg"]:
        storage.write_bytes(storage.join(base, "src", name), b"x" * len(name))
    storage.write_bytes(storage.join(base, "src", "a", storage.temporary_name("4.jpg")), b"x")
    listed = listing.list_files(storage.join(base, "src"), (".jpg", ".png"))
    assert [f.relative for f in listed] == ["a/1.JPG", "b/2.jpg", "b/deeper/3.png", "top.jpg"]
    assert [f.size for f in listed] == [7, 7, 14, 7]
    assert all(storage.read_bytes(f.uri) == b"x" * f.size for f in listed)


def test_exists_sees_files_and_folders(base: str) -> None:
    storage.write_bytes(storage.join(base, "f", "x.bin"), b"1")
    assert storage.exists(storage.join(base, "f", "x.bin"))
    assert storage.exists(storage.join(base, "f"))
    assert not storage.exists(storage.join(base, "g"))
    assert storage.is_file(storage.join(base, "f", "x.bin"))
    assert not storage.is_file(storage.join(base, "f"))


def test_list_folder_skips_temporaries(base: str) -> None:
    storage.write_bytes(storage.join(base, "d", "a.npy"), b"12")
    storage.write_bytes(storage.join(base, "d", "sub", "b.json"), b"{}")
    storage.write_bytes(storage.join(base, "d", storage.temporary_name("c.npy")), b"half")
    assert listing.list_folder(storage.join(base, "d")) == {"a.npy": 2, "sub/b.json": 2}
    assert listing.list_folder(storage.join(base, "nowhere")) == {}


def test_local_write_survives_a_missing_parent(tmp_path: Path) -> None:
    uri = str(tmp_path / "a" / "b" / "c.json")
    storage.write_json([1], uri)
    assert os.listdir(tmp_path / "a" / "b") == ["c.json"]


def test_local_write_commits_by_rename_leaving_no_temporary(tmp_path: Path) -> None:
    """The committed file is the one written (a rename), never an in-place rewrite of the
    target: a reader that opened the old version keeps reading it whole, and the name then
    holds a new file (a new inode) with the new bytes."""
    uri = str(tmp_path / "out" / "labels.bin")
    old, new = bytes(range(256)) * 64, bytes(reversed(range(256))) * 64
    storage.write_bytes(uri, old)
    assert os.listdir(tmp_path / "out") == ["labels.bin"]
    before = os.stat(uri)
    with open(uri, "rb") as reader:
        head = reader.read(100)
        storage.write_bytes(uri, new)
        rest = reader.read()
    assert head + rest == old  # a copy onto the name would have rewritten the open file
    after = os.stat(uri)
    assert after.st_ino != before.st_ino
    assert Path(uri).read_bytes() == new and after.st_size == len(new)
    assert os.listdir(tmp_path / "out") == ["labels.bin"]  # no temporary left beside it


def test_local_write_replaces_a_symlink_not_its_target(tmp_path: Path) -> None:
    """A rename replaces the name itself: a symlink at the target is replaced, and the file it
    pointed to (perhaps an input) is left untouched."""
    elsewhere = tmp_path / "input.bin"
    elsewhere.write_bytes(b"precious input")
    (tmp_path / "out").mkdir()
    link = tmp_path / "out" / "result.bin"
    link.symlink_to(elsewhere)
    storage.write_bytes(str(link), b"result")
    assert not link.is_symlink() and link.read_bytes() == b"result"
    assert elsewhere.read_bytes() == b"precious input"
    assert sorted(os.listdir(tmp_path / "out")) == ["result.bin"]
