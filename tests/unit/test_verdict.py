"""The report's verdict: labels probably right in plain words, the truth when known, and what
to check next, or that nothing needs checking."""

from __future__ import annotations

import numpy as np

from goggles.report.verdict import nothing_to_check, verdict_html


def test_the_verdict_counts_the_labels_probably_right_and_says_what_to_check() -> None:
    confidence = np.array([1.0] * 8 + [0.6, 0.4])
    text = verdict_html({}, confidence, np.array([0.4, 0.6, 1.0, 1.0]), named=False)
    assert "About 9 of 10 labels (90%) are probably right" in text
    assert "2 labels are less than 90% sure" in text
    assert "Label next: the 4 images below</b>" in text and "2 of them less than 0.99" in text
    assert "--dev-labels" in text
    assert "--names cluster_0=NAME" in text
    assert "Nothing to check" not in text and "folder names" not in text


def test_the_verdict_gives_the_truth_when_the_folders_give_it() -> None:
    text = verdict_html({"accuracy": 0.7}, np.full(10, 0.95), np.full(4, 0.95), named=True)
    assert "Against the folder names: 7 of 10 are right (70.0%)" in text
    assert "--names" not in text  # a dev set named the clusters
    assert "Label next: the 4 images below</b>" in text and "4 of them less than 0.99" in text


def test_confidence_near_one_everywhere_is_nothing_to_check() -> None:
    confidence = np.array([1.0, 0.999, 0.995])
    assert nothing_to_check(confidence) and not nothing_to_check(np.array([1.0, 0.98]))
    text = verdict_html({}, confidence, confidence, named=False)
    assert "Nothing to check:" in text and "Label next" not in text
