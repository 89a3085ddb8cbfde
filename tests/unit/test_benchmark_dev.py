"""The benchmark's simulated person (benchmarks/accuracy.py --dev-from report): labels exactly the
images the tool asks for, round by round, on data whose modes are known."""

from __future__ import annotations

import numpy as np

from benchmarks.accuracy import suggested_dev_set
from goggles.inference.suggest import PER_CLASS, suggest_images


def test_the_person_labels_the_report_list_round_by_round() -> None:
    rng = np.random.default_rng(0)
    mode = np.repeat(np.arange(6), 40)  # six modes, two classes of three modes each
    x = np.eye(8)[mode] + 0.05 * rng.standard_normal((240, 8))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    affinity, described = x[:, :4], [x[:, 4:]]
    budget = 10 * 2
    rows = suggested_dev_set(affinity, described, budget, 2, seed=0)
    assert len(rows) == budget and list(rows) == sorted(set(rows.tolist()))
    assert set(mode[rows].tolist()) == set(range(6))  # every mode asked for
    first = suggest_images(affinity, described, PER_CLASS * 2, seed=0)
    assert set(first.tolist()) <= set(rows.tolist())  # the first round is the report's list
    assert len(set(mode[first].tolist())) == min(6, PER_CLASS * 2)
