"""The run's console lines: a stage's start and end with its counts, and the three closing
lines."""

from __future__ import annotations

import logging

import pytest

from goggles.pipeline import console


def test_stage_lines_name_the_counts(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="goggles.console"):
        console.started("extract")
        console.finished("extract", 12.34, {"features_computed": 5, "features_reused": 75,
                                            "num_prototypes": 248})
        console.finished("infer", 0.0, {"num_classes": 1, "em_iterations": 3}, reused=True)
    assert [r.getMessage() for r in caplog.records] == [
        "extract   started",
        "extract   done in 12.3 s: features of 5 images computed, 75 reused, 248 prototypes",
        "infer     reused from the earlier run: 1 class, 3 EM iterations"]


def test_closing_lines_say_how_right_where_and_what_next() -> None:
    truth = console.closing_lines("out/", {"n_images": 80, "accuracy": 0.975})
    assert truth[0].startswith("accuracy 0.975 on 80 images")
    assert truth[1] == "labels: out/labels.parquet   report: out/report.html"
    assert truth[2].endswith("--output DEST --names cluster_0=NAME,cluster_1=NAME")
    guess = console.closing_lines("out", {"n_images": 80, "estimated_accuracy": 0.9,
                                          "dev_set": {"n_images": 4}})
    assert guess[0].startswith("estimated accuracy 0.900: about 72 of 80 labels")
    assert "--names" not in guess[2]  # a dev set named the clusters
