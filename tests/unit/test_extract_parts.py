"""The extract stage in parts (goggles.pipeline.extract): parts are whole batches that tile the
images, the gather gives the same prototypes and descriptors for any number of parts, it
refuses parts that are not one run's, and infer runs on the gathered features alone (no filter
maps), the backbone method included."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from goggles.config import StageError
from goggles.features.config import AffinityConfig, ExtractConfig
from goggles.inference.config import InferConfig
from goggles.ingest.config import IngestConfig
from goggles.io import storage
from goggles.io.features_folder import read_filter_maps, stored_array
from goggles.pipeline import stages
from goggles.pipeline.extract import part_bounds, part_uri, run_extract, run_gather
from goggles.pipeline.wiring import run_record
from tests.conftest import small_source


@pytest.mark.parametrize("rows, parts, batch", [(100, 4, 32), (2959, 8, 32), (40, 4, 32),
                                                (7, 7, 3), (64, 2, 32), (1, 1, 32)])
def test_parts_tile_the_rows_in_whole_batches_where_they_can(rows: int, parts: int,
                                                             batch: int) -> None:
    bounds = part_bounds(rows, parts, batch)
    assert len(bounds) == parts and bounds[0][0] == 0 and bounds[-1][1] == rows
    assert all(start < stop for start, stop in bounds), bounds
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    if -(-rows // batch) >= parts:  # enough batches: every boundary on a batch edge
        assert all(start % batch == 0 for start, _ in bounds), bounds


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """7 small images extracted by MobileNetV2 (its weights carry the ImageNet classifier) in
    1 part and in 3 parts of whole batches of 2."""
    tmp = tmp_path_factory.mktemp("parts")
    source = small_source(tmp / "source", 7, size=40, bad=False)
    manifest = str(tmp / "manifest.parquet")
    stages.run_ingest(IngestConfig(), str(source), manifest)
    config = ExtractConfig(backbone="mobilenet_v2", descriptor_backbone="none", num_workers=0,
                           batch_size=2, top_k=3, max_prototypes=9, seed=4)
    out = {}
    for parts in (1, 3):
        folder = tmp / f"parts-{parts}"
        result = run_extract(config, manifest, str(folder / "features"),
                             str(folder / "prototypes.parquet"), num_parts=parts)
        out[parts] = {"folder": folder, "result": result}
    return {"tmp": tmp, "manifest": manifest, "config": config, **out}


def test_any_number_of_parts_gives_the_same_features_and_prototypes(extracted: dict) -> None:
    one, three = extracted[1]["folder"], extracted[3]["folder"]
    assert (one / "prototypes.parquet").read_bytes() == (three / "prototypes.parquet").read_bytes()
    for name in ("descriptors-mobilenet_v2.npy", "imagenet-logits.npy"):
        # the gather joins none: each part keeps its rows' (the gather reads no descriptor)
        assert not (three / "features" / name).exists()
        assert np.array_equal(stored_array(str(one / "features"), name),
                              stored_array(str(three / "features"), name))
        assert len(stored_array(str(three / "features"), name)) == 7
        assert len(list((three / "features").glob(f"part-*/{name}"))) == 3
    assert np.array_equal(read_filter_maps(str(one / "features"), 0, 7),
                          read_filter_maps(str(three / "features"), 0, 7))
    # rows across a part boundary, from the gathered folder's list of parts
    assert np.array_equal(read_filter_maps(str(three / "features"), 1, 5),
                          read_filter_maps(str(one / "features"), 1, 5))
    meta = storage.read_json(str(three / "features" / "meta.json"))
    assert [(p["start"], p["stop"]) for p in meta["parts"]] == [(0, 2), (2, 6), (6, 7)]
    assert extracted[3]["result"]["num_prototypes"] == 9
    found = extracted[3]["result"]["prototypes_found"]
    assert found == extracted[1]["result"]["prototypes_found"] and 9 < found <= 21
    budget = extracted[3]["result"]["prototype_budget"]  # what metrics.json records
    assert (budget["requested"], budget["cap"], budget["binds"]) == (9, 9, True)


def test_the_default_budget_keeps_every_prototype_of_a_small_task(extracted: dict,
                                                                    tmp_path: Path) -> None:
    folder = extracted[3]["folder"] / "features"
    config = dataclasses.replace(extracted["config"], max_prototypes=-1)
    result = run_gather(config, [part_uri(str(folder), s) for s in range(3)],
                        str(tmp_path / "f"), str(tmp_path / "p.parquet"), num_classes=2)
    assert result["num_prototypes"] == result["prototypes_found"]
    assert result["prototype_budget"]["cap"] == 10_000
    assert not result["prototype_budget"]["binds"]
    assert "automatic" in result["prototype_budget"]["rule"]
    record = run_record({"backbone": "b", "seed": 0, "top_k": 3, "num_shards": 3,
                         "source_uri": "/in"}, runner="inprocess", weights_source="",
                        num_prototypes=result["num_prototypes"], extracted=result)
    assert record["prototype_budget"]["cap"] == 10_000
    assert record["prototype_budget"]["prototypes_found"] == result["prototypes_found"]


def test_the_gather_refuses_parts_that_are_not_one_runs(extracted: dict, tmp_path: Path) -> None:
    folder = extracted[3]["folder"] / "features"
    config = extracted["config"]
    parts = [part_uri(str(folder), s) for s in range(3)]
    with pytest.raises(StageError, match=r"not the 3 parts 0..2"):
        run_gather(config, parts[:2], str(tmp_path / "f"), str(tmp_path / "p.parquet"))
    mixed = [part_uri(str(extracted[1]["folder"] / "features"), 0), *parts[1:]]
    with pytest.raises(StageError, match="not the 1 parts|do not tile"):
        run_gather(config, mixed, str(tmp_path / "f"), str(tmp_path / "p.parquet"))


def test_an_affinity_shard_takes_one_part_and_checks_the_shard_count(extracted: dict,
                                                                     tmp_path: Path) -> None:
    folder = extracted[3]["folder"]
    result = stages.run_affinity(AffinityConfig(num_shards=3, device="cpu"),
                                 part_uri(str(folder / "features"), 1),
                                 str(folder / "prototypes.parquet"), str(tmp_path / "a"))
    assert (result["start"], result["stop"], result["shard_id"]) == (2, 6, 1)
    assert np.load(tmp_path / "a" / "affinity.npy").shape == (4, 9)
    with pytest.raises(StageError, match="num_shards=2"):
        stages.run_affinity(AffinityConfig(num_shards=2, device="cpu"),
                            part_uri(str(folder / "features"), 1),
                            str(folder / "prototypes.parquet"), str(tmp_path / "b"))
    with pytest.raises(StageError, match="names no part"):
        stages.run_affinity(AffinityConfig(num_shards=3, device="cpu"), str(folder / "features"),
                            str(folder / "prototypes.parquet"), str(tmp_path / "c"))


@pytest.mark.parametrize("method", ["graph-em", "backbone"])
def test_infer_reads_no_filter_maps(extracted: dict, tmp_path: Path, method: str) -> None:
    """With every part removed after affinity (as an infer pod never has them), the fanned-out
    infer runs on what the affinity shards wrote: the sample's rows with their descriptors, or
    for ``backbone`` the ImageNet logits."""
    from goggles.pipeline import fanout

    run = tmp_path / "run"
    shutil.copytree(extracted[3]["folder"], run)
    config = InferConfig(num_classes=2, method=method, device="cpu")
    fanout.run_plan_sample(config, extracted["manifest"], "", str(run / "sample"))
    shards, parts = [], []
    for shard in range(3):
        uri = str(run / "affinity" / f"shard-{shard:05d}")
        stages.run_affinity(AffinityConfig(num_shards=3, device="cpu"),
                            part_uri(str(run / "features"), shard),
                            str(run / "prototypes.parquet"), uri,
                            sample_uri=str(run / "sample"),
                            sample_part_uri=str(run / f"sample-{shard}"))
        shards.append(uri)
        parts.append(str(run / f"sample-{shard}"))
    shutil.rmtree(run / "features")
    fanout.run_fit(config, str(run / "sample"), parts, str(run / "prototypes.parquet"),
                   str(run / "fit"))
    labelled = [str(run / f"labels-{s}") for s in range(3)]
    for shard, out in zip(shards, labelled, strict=True):
        fanout.run_label_shard(str(run / "fit"), shard, out, num_shards=3)
    fanout.run_gather_labels(extracted["manifest"], str(run / "fit"), labelled,
                             str(run / "prototypes.parquet"), str(run / "labels.parquet"),
                             str(run / "inference.json"))
    labels = storage.read_parquet(str(run / "labels.parquet"))
    assert labels.num_rows == 7
    if method == "backbone":  # clusters named after ImageNet classes
        names = storage.read_json(str(run / "inference.json"))["cluster_names"]
        assert len(set(names)) == 2 and not any(n.startswith("cluster_") for n in names)
