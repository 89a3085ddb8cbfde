"""goggles.completion: a file is complete when it exists; a folder when its _SUCCESS marker
lists files that are all there (local paths and memory://; the object stores are exercised with
killed writers in tests/integration/test_object_storage.py)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from goggles import completion, storage


@pytest.fixture(params=["local", "memory"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    return f"memory://test-completion-{uuid.uuid4().hex[:8]}"


def test_folder_marker_makes_a_folder_complete(base: str) -> None:
    folder = storage.join(base, "features")
    completion.begin_folder(folder)
    storage.write_npy(np.zeros(10), storage.join(folder, "shard-00000.npy"))
    storage.write_json({"n": 10}, storage.join(folder, "meta.json"))
    assert not completion.is_complete(folder)  # files alone are not a complete artifact
    listing = completion.commit_folder(folder)
    assert sorted(listing) == ["meta.json", "shard-00000.npy"]
    assert completion.is_complete(folder)

    storage.write_bytes(storage.join(folder, "shard-00000.npy"), b"changed")
    assert not completion.is_complete(folder)  # a listed file changed size
    completion.commit_folder(folder)
    assert completion.is_complete(folder)
    storage.remove(storage.join(folder, "meta.json"))
    assert not completion.is_complete(folder)  # a listed file is gone

    completion.commit_folder(folder)
    completion.begin_folder(folder)  # a rewrite starts: the old marker no longer vouches
    assert not completion.is_complete(folder)


def test_a_single_file_is_complete_when_it_exists(base: str) -> None:
    uri = storage.join(base, "labels.parquet")
    assert not completion.is_complete(uri)
    storage.write_parquet(pa.table({"a": [1]}), uri)
    assert completion.is_complete(uri) and storage.exists(uri)


def test_begin_folder_clears_killed_writers_leftovers(base: str) -> None:
    folder = storage.join(base, "shard")
    storage.write_bytes(storage.join(folder, storage.temporary_name("affinity.npy")), b"half")
    completion.begin_folder(folder)
    assert storage.list_folder(folder) == {} and storage.remove_temporaries(folder) == 0
    storage.write_bytes(storage.join(folder, "affinity.npy"), b"full")
    assert completion.commit_folder(folder) == {"affinity.npy": 4}
    assert completion.is_complete(folder)


def test_a_corrupt_marker_is_not_trusted(base: str) -> None:
    folder = storage.join(base, "f")
    storage.write_bytes(storage.join(folder, "x"), b"1")
    storage.write_bytes(storage.join(folder, completion.SUCCESS_MARKER), b"not json")
    assert not completion.is_complete(folder)
