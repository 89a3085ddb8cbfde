"""The feature cache (goggles.features.cache): entries keyed by image content and network,
atomic, a bad entry recomputed; and the extract stage through it — only the images the cache
lacks are computed, and what it writes is the same on a cold and a warm run."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from goggles.features.cache import FeatureCache
from goggles.features.config import ExtractConfig
from goggles.ingest.config import IngestConfig
from goggles.io import storage
from goggles.pipeline import stages
from goggles.pipeline.extract import run_extract
from tests.conftest import small_source

SHA = "ab" + "0" * 62
SHAPE = (4, 2, 2)


def _cache(root: Path, **changes: object) -> FeatureCache:
    fields = {"uri": str(root), "kind": "maps", "network": "mobilenet_v2", "weights": "w1",
              "image_size": 224, "arithmetic": "float32", "shape": SHAPE, **changes}
    return FeatureCache(**fields)  # type: ignore[arg-type]


def test_an_entry_round_trips_bit_for_bit_under_its_content_hash(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    value = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    assert cache.get(SHA) is None
    cache.put(SHA, value)
    assert cache.get(SHA).tobytes() == value.tobytes()
    assert cache.path(SHA).startswith(str(tmp_path / "v1" / cache.namespace / "ab"))
    assert [p.name for p in Path(cache.path(SHA)).parent.iterdir()] == [f"{SHA}.npy"], \
        "a temporary was left beside the entry"
    assert cache.misses([SHA, "cd" + "1" * 62]) == [1]


@pytest.mark.parametrize("change", [{"weights": "w2"}, {"arithmetic": "bfloat16"},
                                    {"image_size": 256}, {"network": "vgg16"},
                                    {"kind": "descriptor"}])
def test_other_weights_arithmetic_size_or_network_never_see_the_entry(tmp_path: Path,
                                                                      change: dict) -> None:
    _cache(tmp_path).put(SHA, np.ones(SHAPE, np.float32))
    assert _cache(tmp_path, **change).get(SHA) is None


@pytest.mark.parametrize("damage", [b"", b"\x93NUMPY garbage", "nan", "shape"])
def test_a_partial_or_corrupt_entry_is_a_miss(tmp_path: Path, damage: object) -> None:
    cache = _cache(tmp_path)
    cache.put(SHA, np.ones(SHAPE, np.float32))
    path = Path(cache.path(SHA))
    if damage == "nan":
        storage.write_npy(np.full(SHAPE, np.nan, np.float32), str(path))
    elif damage == "shape":
        storage.write_npy(np.ones((4, 3, 3), np.float32), str(path))
    else:
        path.write_bytes(damage)  # type: ignore[arg-type]
    assert cache.get(SHA) is None
    cache.put(SHA, np.ones(SHAPE, np.float32))
    assert cache.get(SHA) is not None


def test_a_key_that_is_not_a_content_hash_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="manifest's sha256"):
        _cache(tmp_path).path("../../etc/passwd")


# -- the extract stage through the cache --------------------------------------------------------

def _extract(source: Path, out: Path, cache: Path | None) -> dict:
    manifest = str(out / "manifest.parquet")
    stages.run_ingest(IngestConfig(), str(source), manifest)
    config = ExtractConfig(backbone="mobilenet_v2", descriptor_backbone="vgg16", num_workers=0,
                           batch_size=3, feature_cache_uri=str(cache) if cache else "")
    return run_extract(config, manifest, str(out / "features"), str(out / "prototypes.parquet"))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in ("meta.json", "part.json")}


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Extraction of 5 images without a cache, cold and warm with one, and after 2 more."""
    tmp = tmp_path_factory.mktemp("feature-cache")
    source = small_source(tmp / "source", 5, size=40, bad=False)
    cache = tmp / "cache"
    results = {"none": _extract(source, tmp / "none", None),
               "cold": _extract(source, tmp / "cold", cache),
               "warm": _extract(source, tmp / "warm", cache)}
    small_source(tmp / "more", 7, size=40, bad=False)  # the same 5 and 2 new ones
    for image in (tmp / "more").rglob("*.png"):
        target = source / image.relative_to(tmp / "more")
        if not target.exists():
            target.write_bytes(image.read_bytes())
    results["grown"] = _extract(source, tmp / "grown", cache)
    results["grown-cold"] = _extract(source, tmp / "grown-cold", None)
    return {"tmp": tmp, "cache": cache, "source": source, **results}


def test_a_warm_cache_computes_nothing_and_writes_the_same_features(grown: dict) -> None:
    assert (grown["cold"]["features_computed"], grown["cold"]["features_reused"]) == (5, 0)
    assert (grown["warm"]["features_computed"], grown["warm"]["features_reused"]) == (0, 5)
    assert (grown["none"]["features_computed"], grown["none"]["features_reused"]) == (5, 0)
    tmp = grown["tmp"]
    none, cold, warm = (_files(tmp / name) for name in ("none", "cold", "warm"))
    part = {f"features/part-00000/{name}" for name in (
        "shard-00000.npy", "index.parquet", "candidates.parquet", "imagenet-logits.npy",
        "descriptors-mobilenet_v2.npy", "descriptors-vgg16.npy")}
    assert set(none) == part | {"prototypes.parquet", "manifest.parquet"}
    assert cold == warm == none, "the cache changed what extract writes"


def test_a_grown_source_computes_only_the_new_images(grown: dict) -> None:
    assert (grown["grown"]["features_computed"], grown["grown"]["features_reused"]) == (2, 5)
    entries = list((grown["cache"] / "v1").glob("maps-mobilenet_v2-*/*/*.npy"))
    descriptors = list((grown["cache"] / "v1").glob("descriptor-vgg16-*/*/*.npy"))
    assert len(entries) == len(descriptors) == 7
    _assert_close(grown["tmp"] / "grown", grown["tmp"] / "grown-cold")


def _assert_close(one: Path, other: Path) -> None:
    """The same features up to the CPU convolution's rounding, which depends on which images
    share a batch (an incremental run batches only the new images): the same prototypes at the
    same positions, values equal to a few ulps."""
    assert (one / "features" / "part-00000" / "index.parquet").read_bytes() == \
        (other / "features" / "part-00000" / "index.parquet").read_bytes()
    for name in ("part-00000/shard-00000.npy", "part-00000/descriptors-mobilenet_v2.npy",
                 "part-00000/descriptors-vgg16.npy"):
        np.testing.assert_allclose(np.load(one / "features" / name),
                                   np.load(other / "features" / name), rtol=1e-4, atol=1e-5)
    mine = storage.read_parquet(str(one / "prototypes.parquet"))
    theirs = storage.read_parquet(str(other / "prototypes.parquet"))
    for column in ("prototype_id", "image_id", "h", "w", "channel"):
        assert mine[column].equals(theirs[column]), column


def test_a_damaged_entry_is_recomputed(grown: dict, tmp_path: Path) -> None:
    entry = sorted((grown["cache"] / "v1").glob("maps-mobilenet_v2-*/*/*.npy"))[0]
    entry.write_bytes(entry.read_bytes()[:100])  # cut short, as by a full disk
    again = _extract(grown["source"], tmp_path / "again", grown["cache"])
    assert (again["features_computed"], again["features_reused"]) == (1, 6)
    _assert_close(tmp_path / "again", grown["tmp"] / "grown")


def test_two_runs_sharing_a_cache_at_once_agree(tmp_path: Path) -> None:
    source = small_source(tmp_path / "source", 4, size=40, bad=False)
    cache = tmp_path / "cache"
    results: dict[str, dict] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            results[name] = _extract(source, tmp_path / name, cache)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    assert not [p for p in cache.rglob("*") if storage.is_temporary(p.name)]



@pytest.mark.parametrize("cached", [True, False])
def test_an_image_overwritten_between_ingest_and_extract_is_never_kept(
        tmp_path: Path, cached: bool) -> None:
    """On a cluster ingest and extract are separate pods: a file rewritten between them must not
    be cached under the hash ingest recorded (every later run sharing the cache would reuse the
    new picture's features for the old one), nor pass silently without a cache."""
    from goggles.io.images import CHANGED, ImageChanged

    source = small_source(tmp_path / "source", 4, size=40, bad=False)
    other = small_source(tmp_path / "other", 6, size=40, bad=False)
    cache = tmp_path / "cache"
    manifest = str(tmp_path / "out" / "manifest.parquet")
    stages.run_ingest(IngestConfig(), str(source), manifest)
    victim = source / "a" / "1.png"
    original = victim.read_bytes()
    victim.write_bytes((other / "a" / "5.png").read_bytes())  # another picture, same name
    config = ExtractConfig(backbone="mobilenet_v2", descriptor_backbone="vgg16", num_workers=0,
                           batch_size=3, feature_cache_uri=str(cache) if cached else "")
    with pytest.raises(ImageChanged, match=CHANGED) as raised:
        run_extract(config, manifest, str(tmp_path / "out" / "features"),
                    str(tmp_path / "out" / "prototypes.parquet"))
    assert raised.value.uris == [str(victim)]
    (old_sha,) = [row for row in storage.read_parquet(manifest).to_pylist()
                  if row["uri"] == str(victim)]
    assert not list(cache.rglob(f"{old_sha['sha256']}.npy")), "cached under the old hash"
    if cached:  # the unchanged images' entries are kept
        assert len(list((cache / "v1").glob("maps-mobilenet_v2-*/*/*.npy"))) == 3
        victim.write_bytes(original)  # restored: the rerun computes it, reusing the rest
        again = _extract(source, tmp_path / "again", cache)
        assert (again["features_computed"], again["features_reused"]) == (1, 3)
        _extract(source, tmp_path / "fresh", None)
        _assert_close(tmp_path / "again", tmp_path / "fresh")


@pytest.mark.slow
def test_in_process_an_image_changed_during_the_run_becomes_a_rejected_row(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process runner turns an image rewritten between ingest and extract into a rejected
    manifest row ("changed during the run"), labels the others, caches nothing under the old
    hash, and its next run ingests the source again."""
    import pyarrow.parquet as pq

    from goggles.parameters import RunParameters
    from goggles.pipeline.inprocess import run_inprocess

    source = small_source(tmp_path / "source", 5, size=40, bad=False)
    other = small_source(tmp_path / "other", 7, size=40, bad=False)
    victim = source / "a" / "3.png"
    real_ingest = stages.run_ingest

    def ingest_then_overwrite(*args: object, **kwargs: object) -> dict:
        result = real_ingest(*args, **kwargs)  # type: ignore[arg-type]
        victim.write_bytes((other / "a" / "5.png").read_bytes())  # another writer, meanwhile
        return result

    params = RunParameters(source_uri=str(source), output_uri=str(tmp_path / "out"),
                           num_classes=2, method="kmeans", backbone="mobilenet_v2",
                           descriptor_backbone="none", top_k=2, device="cpu",
                           feature_cache_uri=str(tmp_path / "cache"))
    monkeypatch.setattr(stages, "run_ingest", ingest_then_overwrite)
    metrics = run_inprocess(params)
    monkeypatch.setattr(stages, "run_ingest", real_ingest)
    rows = {r["uri"]: r for r in pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()}
    assert rows[str(victim)]["status"] == "rejected"
    assert rows[str(victim)]["error"] == "changed during the run"
    assert sorted(r["image_id"] for r in rows.values() if r["status"] == "accepted") == \
        [0, 1, 2, 3]
    assert metrics["n_images"] == 4 and metrics["n_rejected"] == 1
    assert pq.read_table(tmp_path / "out" / "labels.parquet").num_rows == 4
    assert not list((tmp_path / "cache").rglob(f"{rows[str(victim)]['sha256']}.npy"))
    again = run_inprocess(params)  # the next run reads the source as it now is
    rows = {r["uri"]: r for r in pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()}
    assert rows[str(victim)]["status"] == "accepted" and again["n_images"] == 5
    assert again["features_computed"] == 1 and again["features_reused"] == 4
