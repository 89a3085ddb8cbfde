"""The benchmark's simulated review loop (benchmarks/accuracy.py --dev-from report): the dev
labels a person following the report gives, on a fit whose clusters are known."""

from __future__ import annotations

import numpy as np

from benchmarks.accuracy import report_dev_set
from goggles.inference.base import label_confidence
from goggles.inference.graph_em import GraphEM
from goggles.report.page import NAMING_EXEMPLARS
from goggles.report.review import REVIEW_PER_CLUSTER


def test_report_dev_set_names_exemplars_and_labels_the_listed_images() -> None:
    rng = np.random.default_rng(0)
    group = np.repeat([0, 1], 60)
    x = rng.normal(0, 0.3, (120, 8))
    x[:, 0] += 3 * (2 * group - 1)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    # each group is one cluster; group 0 holds 20 cats and 40 dogs, group 1 only dogs: the
    # person still names the clusters apart, group 0 "cat"
    truth = ["cat" if g == 0 and i % 3 == 0 else "dog" for i, g in enumerate(group)]
    model = GraphEM(2, random_state=0).fit(x, np.arange(8), descriptors=[x])
    label = model.posteriors_.argmax(axis=1)
    rows, names = report_dev_set(model, truth, 2)
    assert len(rows) == len(set(rows.tolist())) == 2 * (NAMING_EXEMPLARS + REVIEW_PER_CLUSTER)
    assert list(rows) == sorted(rows)
    confidence = label_confidence(model)
    for k in (0, 1):
        members = np.flatnonzero(label == k)
        exemplars = members[np.argsort(-confidence[members], kind="stable")][:NAMING_EXEMPLARS]
        typed = {names[list(rows).index(i)] for i in exemplars}
        cluster_of_cats = label[np.flatnonzero(group == 0)[0]]
        assert typed == {"cat" if k == cluster_of_cats else "dog"}  # right or wrong for each
        checked = [i for i in rows if i in members and i not in exemplars]
        assert len(checked) == REVIEW_PER_CLUSTER
        assert all(names[list(rows).index(i)] == truth[i] for i in checked)
        others = np.setdiff1d(members, rows)  # the listed ones are the least confident
        assert max(confidence[checked]) <= min(confidence[others]) + 1e-12
