"""The report as a review loop: the images whose labels are likeliest wrong, and the form that
turns what a person types into the page into a dev-labels CSV for the next run (measured against
other lists, and against labels drawn evenly per class, in docs/methods.md: "Which images to
label").

Per cluster the report lists the :data:`REVIEW_PER_CLUSTER` images of lowest ``confidence``
(uncertainty sampling, Lewis & Gale 1994): these are where a wrong label is likeliest, and a
dev label on one both corrects it and, as a seed of inference (:mod:`goggles.inference.seeds`),
pulls its neighbours along. Each listed image has a field; each cluster keeps its name field.
``Download dev-labels.csv`` writes ``uri,label`` rows: each named cluster's most confident
images with its name, the dev labels of the run (so the set grows round by round), and every
image field that holds a label — a later row for the same image wins.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np

__all__ = ["REVIEW_PER_CLUSTER", "SCRIPT", "by_confidence", "review_html", "review_rows"]

REVIEW_PER_CLUSTER = 5
"""Images listed for review per cluster: a handful a person labels in a minute."""

SCRIPT = """function gogglesCsv(u,l){
return '"'+u.replace(/"/g,'""')+'","'+l.replace(/"/g,'""')+'"';}
function gogglesDevLabels(){var rows=new Map();
document.querySelectorAll("input.cluster-name").forEach(function(input){
var name=input.value.trim();if(!name)return;var uris=GOGGLES_EXEMPLARS[input.dataset.cluster]||[];
uris.forEach(function(u){rows.set(u,name);});});
GOGGLES_DEV.forEach(function(r){rows.set(r[0],r[1]);});
document.querySelectorAll("input.image-label").forEach(function(input){
var name=input.value.trim();if(name)rows.set(input.dataset.uri,name);});
var out=["uri,label"];rows.forEach(function(l,u){out.push(gogglesCsv(u,l));});
return out.join("\\n")+"\\n";}
function gogglesDownload(){var blob=new Blob([gogglesDevLabels()],{type:"text/csv"});
var a=document.createElement("a");a.href=URL.createObjectURL(blob);a.download="dev-labels.csv";
document.body.appendChild(a);a.click();a.remove();}"""
"""The page's script: ``gogglesDevLabels()`` is the CSV text, ``gogglesDownload()`` saves it."""


def by_confidence(label: np.ndarray, confidence: np.ndarray,
                  num_classes: int) -> dict[int, np.ndarray]:
    """Per cluster, its rows, most confident first (ties by row): the page shows the first and
    last of them, and the CSV names a cluster by its first ones (the naming exemplars)."""
    label = np.asarray(label)
    confidence = np.asarray(confidence, dtype=np.float64)
    return {k: np.flatnonzero(label == k)[np.argsort(-confidence[label == k], kind="stable")]
            for k in range(num_classes)}


def review_rows(label: np.ndarray, confidence: np.ndarray, num_classes: int, *,
                labeled: Sequence[int] = (),
                per_cluster: int = REVIEW_PER_CLUSTER) -> dict[int, list[int]]:
    """Per cluster, the rows of its ``per_cluster`` least confident images that carry no label
    yet (``labeled``: the dev set, the exemplars a cluster name labels), least confident first
    (ties by row)."""
    label = np.asarray(label)
    confidence = np.asarray(confidence, dtype=np.float64)
    done = np.zeros(len(label), dtype=bool)
    done[np.asarray(labeled, dtype=np.int64)] = True
    out = {}
    for k in range(num_classes):
        rows = np.flatnonzero((label == k) & ~done)
        out[k] = rows[np.argsort(confidence[rows], kind="stable")][:per_cluster].tolist()
    return out


def review_html(rows: dict[int, list[int]], uris: Sequence[str], names: Sequence[str],
                confidence: np.ndarray, thumbnails: dict[str, str]) -> str:
    """The review section: per cluster its listed images, each with its confidence and a field
    for its label (``input.image-label``, ``data-uri``)."""
    parts = ["<h2 id='review'>Images to check</h2><p class='note'>The least confident images "
             "of each cluster: where a label is likeliest wrong. Type the right class of any "
             "of them (leave a field empty to skip it), name the clusters above, download "
             "dev-labels.csv and rerun with <code>--dev-labels dev-labels.csv</code>: the "
             "labeled images become seeds of inference, and <code>metrics.json</code> scores "
             "the other images apart from them.</p><button type='button' "
             "id='download-review' onclick='gogglesDownload()'>Download dev-labels.csv</button>"]
    for k, members in rows.items():
        figures = "".join(
            f"<figure class='review'><img src='{thumbnails[uris[i]]}' "
            f"alt='{html.escape(uris[i])}' title='{html.escape(uris[i])}'><figcaption>"
            f"{html.escape(names[k])} · {confidence[i]:.3f}<br><input class='image-label' "
            f"data-uri='{html.escape(uris[i])}' aria-label='label of {html.escape(uris[i])}' "
            "size='12'></figcaption></figure>"
            for i in members if uris[i] in thumbnails)
        parts.append(f"<div><b>{html.escape(names[k])}</b><br>{figures}</div>")
    return "".join(parts)
