"""The report as a labeling loop: the images the tool asks a person to label
(:mod:`goggles.inference.suggest`, ``inference.json``'s ``suggestions``: typical images that
cover the data, none labeled before) and the form that turns what the person types into a
dev-labels CSV for the next run.

Each listed image has a field with the run's class names offered (a new class may be typed:
nothing assumes a cluster is a class). ``Download dev-labels.csv`` writes ``uri,label`` rows:
the dev labels of the run (so the set grows round by round) and every field that holds a label
— a later row for the same image wins. Runs from before the suggestions list each cluster's
least confident images instead (:func:`review_rows`).
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


def review_html(rows: Sequence[int], uris: Sequence[str], label_names: Sequence[str],
                confidence: np.ndarray, thumbnails: dict[str, str],
                classes: Sequence[str]) -> str:
    """The labeling section: each listed image (``rows``, positions in ``uris``) with its current
    label (``label_names`` [N]) and confidence and a field for its class (``input.image-label``,
    ``data-uri``), offering ``classes`` (the run's class names) and taking any other."""
    options = "".join(f"<option value='{html.escape(c)}'>" for c in classes)
    parts = ["<h2 id='review'>Images to label</h2><p class='note'>The images whose labels would "
             "help most: typical images of the groups the data falls into, none labeled before "
             "(the same list as <code>goggles suggest</code>). Type the class of each you can "
             "(any class, also one no cluster found; leave a field empty to skip it), download "
             "dev-labels.csv and rerun with <code>--dev-labels dev-labels.csv</code>: the labels "
             "name the classes and guide inference, and the next page asks for the next "
             "images. <code>metrics.json</code> scores the other images apart from them.</p>"
             "<button type='button' id='download-review' onclick='gogglesDownload()'>Download "
             f"dev-labels.csv</button><datalist id='goggles-classes'>{options}</datalist><div>"]
    parts += [f"<figure class='review'><img src='{thumbnails[uris[i]]}' "
              f"alt='{html.escape(uris[i])}' title='{html.escape(uris[i])}'><figcaption>"
              f"now {html.escape(label_names[i])} · {confidence[i]:.3f}<br>"
              f"<input class='image-label' list='goggles-classes' "
              f"data-uri='{html.escape(uris[i])}' aria-label='class of {html.escape(uris[i])}' "
              "size='12'></figcaption></figure>"
              for i in rows if uris[i] in thumbnails]
    return "".join(parts) + "</div>"
