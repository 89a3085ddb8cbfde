"""Graph EM fanned out over the shards (goggles.pipeline.fanout), through the stage functions a
cluster's tasks call, against the in-process fit: the same labels, byte for byte, for any number
of shards, with no task reading more of A than its shard or the sample."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from goggles.config import StageError
from goggles.features.descriptors import bilinear_descriptors
from goggles.inference.config import InferConfig
from goggles.inference.registry import create
from goggles.inference.seeds import Seeds
from goggles.io import artifacts, storage
from goggles.io.blocks import InMemoryRows
from goggles.pipeline import fanout
from goggles.pipeline.stages import _suggestions
from tests.unit.test_graph import accuracy, planted_maps
from tests.unit.test_inference import planted

N, MAX_ROWS = 120, 70


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A planted 2-class A [120, M] and descriptors, with a manifest, prototypes and 2 dev labels
    per class on disk."""
    tmp = tmp_path_factory.mktemp("fanout")
    a, source, truth = planted(2, N // 2, noise=0.15, seed=5)
    d = bilinear_descriptors(planted_maps(truth, seed=5))
    uris = [f"file:///images/{i:04d}.jpg" for i in range(N)]
    manifest = pa.table({"image_id": pa.array(range(N), pa.int64()), "uri": uris,
                         "status": ["accepted"] * N, "label": [None] * N,
                         "sha256": ["0" * 64] * N})
    storage.write_parquet(manifest, str(tmp / "manifest.parquet"))
    storage.write_parquet(pa.table({"prototype_id": pa.array(range(len(source)), pa.int64()),
                                    "image_id": pa.array(source, pa.int64()),
                                    "h": pa.array([0] * len(source), pa.int32()),
                                    "w": pa.array([0] * len(source), pa.int32())}),
                          str(tmp / "prototypes.parquet"))
    dev_rows = [int(np.flatnonzero(truth == k)[j]) for k in (0, 1) for j in (0, 1)]
    names = ["cat" if truth[r] == 0 else "dog" for r in dev_rows]
    (tmp / "dev.csv").write_text("uri,label\n" + "".join(
        f"{uris[r]},{name}\n" for r, name in zip(dev_rows, names, strict=True)))
    return {"tmp": tmp, "a": a, "source": source, "truth": truth, "d": d,
            "dev_rows": dev_rows, "names": names}


def fanned_out(run: dict, shards: int, dev: bool, out: Path,
               method: str = "graph-em") -> tuple[pa.Table, dict]:
    """The cluster's tasks, one function call each: plan, affinity shards, fit, label shards,
    gather."""
    tmp, a, d = run["tmp"], run["a"], run["d"]
    config = InferConfig(num_classes=2, seed=0, method=method)
    dev_uri = str(tmp / "dev.csv") if dev else ""
    plan = fanout.run_plan_sample(config, str(tmp / "manifest.parquet"), dev_uri,
                                  str(out / "sample"), max_rows=MAX_ROWS)
    assert plan["n_images"] == N
    if method == "graph-em":
        assert MAX_ROWS <= plan["n_sample"] <= MAX_ROWS + (4 if dev else 0)
    else:  # the other methods fit on every image
        assert plan["n_sample"] == N
    bounds = np.linspace(0, N, shards + 1).astype(int)
    shard_uris, part_uris = [], []
    for s, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        uri, part = str(out / f"affinity-{s}"), str(out / f"sample-{s}")
        artifacts.write_affinity_shard(uri, a[start:stop], start=int(start), shard_id=s,
                                       num_shards=shards, dtype="float32")
        fanout.keep_shard_descriptors(uri, [d[start:stop]])
        artifacts.write_sample_part(a[start:stop], int(start), [d[start:stop]],
                                    str(out / "sample"), part)
        artifacts.write_sample_part(a[start:stop], int(start), [], str(out / "sample"),
                                    str(out / f"view-{s}"), rows="view.npy")
        shard_uris.append(uri)
        part_uris.append(part)
    fanout.run_fit(config, str(out / "sample"), part_uris[::-1], str(tmp / "prototypes.parquet"),
                   str(out / "fit"))
    label_uris = []
    for s, uri in enumerate(shard_uris):
        label_uris.append(str(out / f"labels-{s}"))
        fanout.run_label_shard(str(out / "fit"), uri, label_uris[-1])
    fanout.run_gather_labels(str(tmp / "manifest.parquet"), str(out / "fit"), label_uris[::-1],
                             str(tmp / "prototypes.parquet"), str(out / "labels.parquet"),
                             str(out / "inference.json"))
    return storage.read_parquet(str(out / "labels.parquet")), \
        storage.read_json(str(out / "inference.json"))


def in_process(run: dict, dev: bool) -> tuple:
    config = InferConfig(num_classes=2, seed=0)
    model = dataclasses.replace(create(config), max_rows=MAX_ROWS)
    seeds = Seeds.from_names(run["dev_rows"], run["names"], 2) if dev else None
    model.fit(run["a"], run["source"], descriptors=[run["d"]], seeds=seeds)
    suggested = _suggestions(InMemoryRows(run["a"]), [run["d"]], config,
                             run["dev_rows"] if dev else (), model.sample_)
    return model, suggested


@pytest.mark.parametrize("dev", [False, True], ids=["no-labels", "dev-labels"])
@pytest.mark.parametrize("shards", [1, 3])
def test_fanned_out_labels_equal_the_in_process_fit(planted_run: dict, tmp_path: Path,
                                                    shards: int, dev: bool) -> None:
    labels, state = fanned_out(planted_run, shards, dev, tmp_path)
    model, suggested = in_process(planted_run, dev)
    assert len(model.sample_) < N  # the fit sampled: the rest were labelled shard by shard
    np.testing.assert_array_equal(np.asarray(labels["probs"].to_pylist()), model.posteriors_)
    np.testing.assert_array_equal(labels["confidence"].to_numpy(), model.confidence_)
    assert state["initial_labels"] == model.initial_labels_.tolist()
    assert state["em_iterations"] == model.n_iter_
    assert state["suggestions"] == suggested
    assert not set(state["suggestions"]["rows"]) & set(planted_run["dev_rows"] if dev else [])
    assert len(state["prototypes"]) > 0
    assert accuracy(planted_run["truth"], labels["label"].to_numpy(), 2) > 0.95
    if dev:  # the clusters carry the dev labels' names, and the dev images keep their class
        names = labels["label_name"].to_pylist()
        assert [names[r] for r in planted_run["dev_rows"]] == planted_run["names"]
        assert state["dev"]["rows"] == planted_run["dev_rows"] and state["dev"]["seeded"]


def test_each_task_reads_its_shard_or_the_sample(planted_run: dict, tmp_path: Path) -> None:
    """The fit reads the sample's rows of A alone, each label task one shard's: what their
    folders hold."""
    fanned_out(planted_run, 3, False, tmp_path)
    sample = storage.read_npy(str(tmp_path / "sample" / "sample.npy"))
    rows = sum(len(np.load(tmp_path / f"sample-{s}" / "rows.npy")) for s in range(3))
    assert rows == len(sample) == MAX_ROWS
    fit = np.load(tmp_path / "fit" / "fit" / "part-0.npy")
    assert fit.dtype == np.float16 and fit.shape == (MAX_ROWS, planted_run["a"].shape[1])


def test_a_missing_sample_part_is_refused(planted_run: dict, tmp_path: Path) -> None:
    fanned_out(planted_run, 3, False, tmp_path)
    assert fanout.run_label_shard(str(tmp_path / "fit"), str(tmp_path / "affinity-1"),
                                  str(tmp_path / "again")) == {"start": 40, "stop": 80}
    # a fit of another run (other images) is refused even when the label parts are complete
    state = storage.read_json(str(tmp_path / "fit" / "state.json"))
    storage.write_json({**state, "n_images": N + 1}, str(tmp_path / "fit" / "state.json"))
    with pytest.raises(StageError, match="fit is of a run of 121 images but the manifest"):
        fanout.run_gather_labels(str(planted_run["tmp"] / "manifest.parquet"),
                                 str(tmp_path / "fit"),
                                 [str(tmp_path / f"labels-{s}") for s in range(3)],
                                 str(planted_run["tmp"] / "prototypes.parquet"),
                                 str(tmp_path / "l.parquet"), str(tmp_path / "i.json"))
    storage.write_json(state, str(tmp_path / "fit" / "state.json"))
    config = InferConfig(num_classes=2, seed=0)
    with pytest.raises(StageError, match="sample.s parts do not tile the rows"):
        fanout.run_fit(config, str(tmp_path / "sample"),
                       [str(tmp_path / "sample-0"), str(tmp_path / "sample-2")],
                       str(planted_run["tmp"] / "prototypes.parquet"), str(tmp_path / "f2"))
    with pytest.raises(StageError, match="label parts do not tile the images"):
        fanout.run_gather_labels(str(planted_run["tmp"] / "manifest.parquet"),
                                 str(tmp_path / "fit"), [str(tmp_path / "labels-1")],
                                 str(planted_run["tmp"] / "prototypes.parquet"),
                                 str(tmp_path / "l.parquet"), str(tmp_path / "i.json"))


@pytest.mark.parametrize("method", ["em", "kmeans"])
def test_other_methods_fit_every_image_in_one_task(planted_run: dict, tmp_path: Path,
                                                   method: str) -> None:
    """The other methods read every row of A in the fit task (their sample is every image); the
    labels are still the in-process fit's."""
    labels, state = fanned_out(planted_run, 3, True, tmp_path, method=method)
    config = InferConfig(num_classes=2, seed=0, method=method)
    seeds = Seeds.from_names(planted_run["dev_rows"], planted_run["names"], 2)
    model = create(config).fit(planted_run["a"], planted_run["source"], seeds=seeds)
    np.testing.assert_array_equal(np.asarray(labels["probs"].to_pylist()), model.posteriors_)
    assert state["method"] == method and state["em_iterations"] == model.n_iter_
    expected = None if model.initial_labels_ is None else model.initial_labels_.tolist()
    assert state["initial_labels"] == expected


def test_the_report_draws_a_view_of_a_not_all_of_it(planted_run: dict, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluate reads the plan's view of A (at most REPORT_ROWS rows, each shard's apart) and
    draws the report's matrix and histograms from those rows and their labels."""
    from goggles.pipeline.wiring import evaluate_and_report

    monkeypatch.setattr(fanout, "REPORT_ROWS", 40)
    fanned_out(planted_run, 3, False, tmp_path)
    view = storage.read_npy(str(tmp_path / "sample" / "view.npy"))
    assert len(view) == 40 and set(view) <= set(storage.read_npy(
        str(tmp_path / "sample" / "sample.npy")))
    parts = [str(tmp_path / f"view-{s}") for s in range(3)]
    assert artifacts.SampleParts(parts).shape == (40, planted_run["a"].shape[1])
    metrics = evaluate_and_report(
        manifest_uri=str(planted_run["tmp"] / "manifest.parquet"),
        labels_uri=str(tmp_path / "labels.parquet"), inference_uri=str(tmp_path / "inference.json"),
        prototypes_uri=str(planted_run["tmp"] / "prototypes.parquet"), affinity_uris=parts,
        metrics_uri=str(tmp_path / "metrics.json"), report_uri=str(tmp_path / "report.html"),
        record={}, timings={}, affinity_sample=True)
    assert metrics["n_images"] == N
    page = (tmp_path / "report.html").read_text()
    assert "Affinity matrix sorted by cluster" in page and "Score distributions" in page
