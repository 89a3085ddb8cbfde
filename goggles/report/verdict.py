"""The top of the report: the verdict in plain words: how many labels are probably right (the
confidence's estimate; the truth too when the folders give it), and what to do next: which
images to check and how, or that nothing needs checking."""

from __future__ import annotations

from typing import Any

import numpy as np

NOTHING_TO_CHECK = 0.99
"""When every label is at least this sure, the page says there is nothing to check."""

UNSURE = 0.9
"""Labels below this confidence are counted as unsure in the verdict."""


def nothing_to_check(confidence: np.ndarray) -> bool:
    """Whether every label is at least :data:`NOTHING_TO_CHECK` sure."""
    confidence = np.asarray(confidence, dtype=np.float64)
    return bool(len(confidence)) and float(confidence.min()) >= NOTHING_TO_CHECK


def _images(count: int) -> str:
    return f"{count} image{'' if count == 1 else 's'}"


def verdict_html(metrics: dict[str, Any], confidence: np.ndarray, listed: np.ndarray, *,
                 named: bool) -> str:
    """The verdict section (``section#verdict``).

    Parameters
    ----------
    metrics : the run's ``metrics.json``.
    confidence : [N] each label's confidence.
    listed : [L] the confidence of each image the "Images to check" section lists.
    named : whether a dev set named the clusters.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    n = len(confidence)
    estimate = float(confidence.mean()) if n else 0.0
    parts = ["<section id='verdict'><h2>Verdict</h2>",
             f"<p class='verdict-estimate'><b>About {round(estimate * n)} of {n} labels "
             f"({estimate:.0%}) are probably right</b>, by the labels' own confidence (its "
             "mean: an estimate, not a measurement)."]
    unsure = int((confidence < UNSURE).sum())
    if unsure:
        parts.append(f" {unsure} label{'s are' if unsure != 1 else ' is'} less than "
                     f"{UNSURE:.0%} sure.")
    parts.append("</p>")
    if isinstance(metrics.get("accuracy"), (int, float)):
        right = round(float(metrics["accuracy"]) * n)
        parts.append(f"<p class='verdict-truth'><b>Against the folder names: {right} of {n} "
                     f"are right ({float(metrics['accuracy']):.1%})</b>, each cluster matched "
                     "to the folder it agrees with most.</p>")
    dev = metrics.get("dev_set") or {}
    if isinstance(dev.get("accuracy_unlabeled"), (int, float)):
        parts.append(f"<p class='verdict-truth'>With the names your dev labels gave: "
                     f"{float(dev['accuracy_unlabeled']):.1%} of the other "
                     f"{dev.get('n_unlabeled', 0)} images carry their folder's name.</p>")
    rename = ("" if named else " Name the clusters without a rerun: "
              "<code>goggles export OUT --format imagefolder --output DEST --names "
              "cluster_0=NAME,cluster_1=NAME</code>.")
    if nothing_to_check(confidence):
        parts.append(f"<p class='verdict-next'><b>Nothing to check:</b> every label is at least "
                     f"{NOTHING_TO_CHECK:g} sure, so no image stands out as likely wrong."
                     f"{rename}</p>")
    else:
        listed = np.asarray(listed, dtype=np.float64)
        unsure_listed = int((listed < NOTHING_TO_CHECK).sum())
        parts.append(
            f"<p class='verdict-next'><b>Label next: the {_images(len(listed))} below</b>, "
            "the ones whose labels would help most (typical images of the groups the data "
            f"falls into, none labeled before; {unsure_listed} of them less than "
            f"{NOTHING_TO_CHECK:g} sure). Type the class of each you can (any class), press "
            "<b>Download dev-labels.csv</b> and rerun with "
            "<code>--dev-labels dev-labels.csv</code>: only inference is redone, and the next "
            "page asks for the next images." + rename + "</p>")
    parts.append("<p class='note'>Parameters, counts and the diagnostic plots follow the "
                 "images.</p></section>")
    return "".join(parts)
