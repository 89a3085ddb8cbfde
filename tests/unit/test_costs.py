"""The cost model of a cluster run (goggles.pipeline.costs) and ``goggles plan``."""

from __future__ import annotations

import dataclasses
import json

import pytest

from goggles.cli import main
from goggles.pipeline.costs import MEASURED, plan, recommended_shards, totals

KEYS = {"task", "pods", "bytes_read", "bytes_written", "peak_memory_bytes", "seconds"}


def _by_task(n: int, **options: object) -> dict:
    return {c.task: c for c in plan(n, **options)}  # type: ignore[arg-type]


def test_every_task_kind_of_the_default_run_with_its_pods() -> None:
    costs = _by_task(100_000, shards=32)
    assert list(costs) == ["list-source", "ingest", "join-manifest", "plan", "extract",
                           "gather", "affinity", "infer", "label", "gather-labels", "evaluate"]
    assert costs["ingest"].pods == costs["extract"].pods == costs["affinity"].pods == \
        costs["label"].pods == 32
    assert all(costs[t].pods == 1 for t in ("join-manifest", "gather", "infer",
                                            "gather-labels", "evaluate"))
    assert recommended_shards(1_000_000) == 98 and recommended_shards(10) == 1


def test_bytes_follow_the_shards_and_the_default_prototype_cap() -> None:
    n, shards = 1_000_000, 98
    costs = _by_task(n, shards=shards)
    rows = -(-n // shards)
    assert costs["extract"].bytes_read == pytest.approx(
        n * MEASURED["manifest"] + rows * MEASURED["image"], rel=1e-3)
    # the default cap at 1M images is 20,000 prototypes: A is N x 20,000 float32
    affinity = n * 20_000 * 4
    assert costs["affinity"].bytes_written > affinity / shards
    # no task reads all of A: the fit the sample's 20,000 rows, evaluate 2,000, a label task
    # its shard's
    assert costs["infer"].bytes_read < 20_000 * 20_000 * 4 * 1.3
    assert costs["evaluate"].bytes_read < 2_000 * 20_000 * 4 + 1e9
    assert costs["label"].bytes_read < 2e9 and costs["infer"].bytes_read < 2e9
    assert max(c.bytes_read for c in costs.values()) < 2e9
    # each ingest task reads its slice of the images, not all of them
    assert costs["ingest"].bytes_read == pytest.approx(rows * MEASURED["image"], rel=1e-3)
    # the gather reads the candidates the parts kept, a few times the cap, not every one
    assert costs["gather"].bytes_read < 5 * 20_000 * MEASURED["prototype"]
    # twice the shards: each shard's pod reads about half of its rows
    half = _by_task(n, shards=2 * shards)["affinity"].bytes_read
    assert half < 0.6 * costs["affinity"].bytes_read
    assert totals(plan(n, shards=shards))["bytes_read"] == pytest.approx(
        sum(c.bytes_read * c.pods for c in costs.values()))


def test_the_cap_does_not_bind_on_small_runs() -> None:
    small, free = _by_task(300), _by_task(300, max_prototypes=0)
    assert small["affinity"].bytes_written == free["affinity"].bytes_written


def test_goggles_plan_prints_a_json_list_of_task_objects(capsys: pytest.CaptureFixture[str],
                                                         ) -> None:
    assert main(["plan", "--images", "1000000", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [item["task"] for item in listed][4:7] == ["extract", "gather", "affinity"]
    assert all(KEYS <= set(item) for item in listed)
    assert next(i for i in listed if i["task"] == "extract")["pods"] == 98
    assert main(["plan", "--images", "1000", "--shards", "4"]) == 0
    out = capsys.readouterr().out
    assert "4 shards" in out and "| affinity | 4 |" in out


def test_plan_refuses_no_images() -> None:
    with pytest.raises(ValueError, match="n_images must be at least 1"):
        plan(0)


def test_a_run_shards_itself_by_default() -> None:
    """num_shards 0 (the default) is what goggles plan recommends at the accepted images, on
    both runners (the plan task, and the in-process keys and records); a set value stays; a run
    of up to 10,240 images keeps the one shard, and so the keys, it had before."""
    from goggles.parameters import RunParameters, default
    from goggles.pipeline.inprocess import run_keys, with_shards
    from goggles.pipeline.wiring import shard_count, stage_configs

    assert default("num_shards") == 0
    assert [shard_count(0, n) for n in (1, 10_240, 10_241, 1_000_000)] == [1, 1, 2, 98]
    assert shard_count(3, 1_000_000) == 3
    params = RunParameters(source_uri="in", output_uri="out", num_classes=2)
    configs = stage_configs(params)
    resolved, resolved_configs = with_shards(params, configs, 25_000)
    assert resolved.num_shards == resolved_configs["affinity"].num_shards == 3
    assert params.num_shards == configs["affinity"].num_shards == 0  # not changed in place
    one = dataclasses.replace(params, num_shards=1)
    small = run_keys(params, configs, {"a.jpg": "x"}, 500)
    assert small == run_keys(one, stage_configs(one), {"a.jpg": "x"}, 500)
    large = run_keys(params, configs, {"a.jpg": "x"}, 25_000)
    assert large.num_shards == 3 and large.affinity is not None and len(large.affinity) == 3
