"""report.html: one self-contained page (images inlined) that shows why each image got its label.

Sections: the verdict (:mod:`goggles.report.verdict`: how many labels are probably right, what
to do next) and the images to check (:mod:`goggles.report.review`), on the first screen; a
summary (N, rejected, K, prototypes, EM iterations, timings, accuracy when known);
the affinity matrix with rows and columns sorted by inferred cluster (the paper's Figure 5,
pooled to at most :data:`MAX_HEATMAP` rows and columns); the confusion matrix and the coverage
and accuracy by confidence threshold when ground truth exists; the EM convergence trace; for the
most informative prototypes, the class-conditional score histograms with the fitted Gaussians
and the image patch each comes from (its receptive field, :mod:`goggles.report.patches`); per
cluster, the most and least confident images and the strongest prototypes. The EM traces are
drawn only when EM iterated more than once. Clusters carry the dev set's class names when one
was given; each cluster has a name field and each image to check a label field, and the page
writes what a person types into a dev-labels CSV for ``--dev-labels`` on the next run.

Reading A is one streamed pass over the stored shards (pooled rows plus the few columns the
histograms need), so the report's memory and time stay small for large N.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from scipy import sparse

from goggles.io import storage
from goggles.io.artifacts import SampleParts, StoredShards, accepted
from goggles.io.images import CHANGED, changed_since_ingest, decode_image
from goggles.io.uris import redact
from goggles.report.evaluation import cluster_classes, coverage_curve
from goggles.report.patches import FIELDS, prototype_patch
from goggles.report.plots import (
    cluster_colors,
    confusion_svg,
    heatmap_image,
    histogram_svg,
    jpeg_uri,
    line_svg,
    png_uri,
)
from goggles.report.review import SCRIPT, by_confidence, review_html, review_rows
from goggles.report.summary import summary_rows
from goggles.report.verdict import nothing_to_check, verdict_html

logger = logging.getLogger(__name__)

MAX_HEATMAP = 600  # rows and columns of the drawn affinity matrix at most
THUMB = 96
PER_CLUSTER = 6  # most / least confident images shown per cluster
MAX_HISTOGRAMS = 6


# -- one pass over A -------------------------------------------------------------------------------

@dataclass
class AffinityView:
    """What the report draws from A: ``pooled`` [R, C] means of row and column groups sorted by
    cluster, the cluster of each group, and the full columns [N, P] of ``column_ids`` of the
    rows drawn (every image, or a cluster run's view of A), whose clusters are
    ``row_labels`` [N]."""

    pooled: np.ndarray
    row_clusters: np.ndarray
    column_clusters: np.ndarray
    column_ids: list[int]
    columns: np.ndarray
    row_labels: np.ndarray


def _groups(clusters: np.ndarray, order: np.ndarray, limit: int) -> np.ndarray:
    """Group id of each position of ``order`` (sorted by cluster): consecutive positions of one
    cluster share groups, each cluster gets groups in proportion to its size, ``limit`` at most."""
    n = len(order)
    groups = np.empty(n, dtype=np.int64)
    sorted_clusters = clusters[order]
    next_group, start = 0, 0
    for k in np.unique(sorted_clusters):
        size = int((sorted_clusters == k).sum())
        share = size if n <= limit else max(1, min(size, round(limit * size / n)))
        groups[start:start + size] = next_group + np.arange(size) * share // size
        next_group += share
        start += size
    return groups


def affinity_view(source, labels: np.ndarray, confidence: np.ndarray,  # type: ignore[no-untyped-def]
                  column_class: np.ndarray, column_ids: list[int], *,
                  limit: int = MAX_HEATMAP) -> AffinityView:
    """Pool A (row blocks, [N, M]) to at most ``limit`` x ``limit`` in one pass.

    Rows are sorted by cluster, most confident first; columns by the cluster of the prototype's
    source image, then by how much higher its own cluster scores than the next one.
    """
    n, m = source.shape
    row_order = np.lexsort((-confidence, labels))
    row_groups = np.empty(n, dtype=np.int64)
    row_groups[row_order] = _groups(labels, row_order, limit)
    num_rows = int(row_groups.max()) + 1
    sizes = np.bincount(row_groups, minlength=num_rows).astype(np.float32)
    pooled = np.zeros((num_rows, m), dtype=np.float32)
    columns = np.empty((n, len(column_ids)), dtype=np.float32)
    for start, block in source.blocks():
        stop = start + block.shape[0]
        weights = 1.0 / sizes[row_groups[start:stop]]
        pool = sparse.csr_matrix((weights, (row_groups[start:stop], np.arange(stop - start))),
                                 shape=(num_rows, stop - start))
        pooled += pool @ block
        columns[start:stop] = block[:, column_ids]
    group_cluster = np.empty(num_rows, dtype=np.int64)
    group_cluster[row_groups] = labels
    num_classes = int(max(labels.max(), column_class.max() if m else 0)) + 1
    cluster_mean = np.zeros((num_classes, m))
    for k in range(num_classes):
        chosen = group_cluster == k
        if chosen.any():
            cluster_mean[k] = np.average(pooled[chosen], axis=0, weights=sizes[chosen])
    own = cluster_mean[column_class, np.arange(m)]
    rest = cluster_mean.copy()
    rest[column_class, np.arange(m)] = -np.inf
    column_order = np.lexsort((-(own - rest.max(axis=0)), column_class))
    column_groups = _groups(column_class, column_order, limit)
    starts = np.flatnonzero(np.diff(column_groups, prepend=-1))
    summed = np.add.reduceat(pooled[:, column_order], starts, axis=1)
    counts = np.diff(np.append(starts, m))
    return AffinityView(pooled=summed / counts, row_clusters=group_cluster,
                        column_clusters=column_class[column_order][starts],
                        column_ids=column_ids, columns=columns, row_labels=labels)


# -- images ----------------------------------------------------------------------------------------

def _load_images(uris: set[str], hashes: Mapping[str, str] | None = None,
                 ) -> dict[str, Image.Image]:
    """Decode each image once (threads; a failure leaves it out, it never fails the report).
    With ``hashes`` (uri -> the manifest's sha256), an image whose bytes changed since ingest is
    left out too: the page must not show another picture than the one labeled."""
    def load(uri: str) -> tuple[str, Image.Image | None]:
        try:
            data = storage.read_bytes(uri)
            if changed_since_ingest(data, (hashes or {}).get(uri)):
                logger.warning("report: not showing %s: %s", redact(uri), CHANGED)
                return uri, None
            return uri, decode_image(data, max_pixels=64_000_000)
        except Exception as error:  # noqa: BLE001 - a missing picture must not fail the report
            logger.warning("report: cannot show %s (%s)", uri, error)
            return uri, None

    with ThreadPoolExecutor(max_workers=4) as pool:
        return {uri: image for uri, image in pool.map(load, sorted(uris)) if image is not None}


def _thumbnail(image: Image.Image) -> str:
    copy = image.copy()
    copy.thumbnail((THUMB, THUMB))
    return jpeg_uri(copy)


# -- the page ----------------------------------------------------------------------------------

STYLE = """body{font-family:sans-serif;margin:2em auto;max-width:1150px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left;font-size:13px}figure{display:inline-block;margin:4px;vertical-align:top;
text-align:center;font-size:11px}figure img{border:1px solid #999}
figure.wide{display:block;text-align:left}.heat{width:min(100%,760px);
image-rendering:pixelated}.swatch{display:inline-block;width:12px;height:12px;margin:0 4px}
.cluster{border-top:3px solid;margin-top:1.5em;padding-top:.3em}.note{color:#555;font-size:13px}
.row{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}"""

def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in rows)
    return f"<table>{body}</table>"


def _figure(kind: str, body: str, caption: str = "", wide: bool = False) -> str:
    text = f"<figcaption>{caption}</figcaption>" if caption else ""
    css = "plot-figure wide" if wide else "plot-figure"
    return f"<figure class='{css}' data-plot='{kind}'>{body}{text}</figure>"


def _confidence(value: float) -> str:
    """Posteriors near 1 (common: a product of hundreds of likelihoods) keep their distance to
    1 visible: ``1−3e-12``."""
    return f"1−{1 - value:.0e}" if 0.9995 < value < 1 else f"{value:.3f}"


def render(metrics: dict[str, Any], labels: Any, state: dict[str, Any], *,
           view: AffinityView | None, prototypes: dict[int, tuple[int, int, int]],
           backbone: str = "vgg16", image_size: int = 224,
           coverage: list[dict[str, Any]] | None = None,
           hashes: Mapping[str, str] | None = None) -> str:
    """The report page.

    Parameters
    ----------
    labels : the labels table sorted by ``image_id`` (rows = images).
    view : the pooled affinity matrix and histogram columns (``None``: A was unavailable).
    prototypes : ``column → (image_id, h, w)`` of the prototypes the page draws.
    coverage : :func:`~goggles.report.evaluation.coverage_curve` (with ground truth).
    """
    names = list(state["cluster_names"])
    colors = cluster_colors(len(names))
    label = labels["label"].to_numpy()
    confidence = labels["confidence"].to_numpy()
    uris = labels["uri"].to_pylist()
    chosen = state.get("prototypes") or []
    order = by_confidence(label, confidence, len(names))
    needed = {uris[i] for k in order for i in
              list(order[k][:PER_CLUSTER]) + list(order[k][::-1][:PER_CLUSTER])}
    needed |= {uris[prototypes[p["column"]][0]] for p in chosen if p["column"] in prototypes}
    dev = state.get("dev") or {"rows": [], "labels": []}
    to_check = [int(i) for i in (state.get("suggestions") or {}).get("rows", [])
                if 0 <= int(i) < len(uris)]
    if not to_check:  # a run from before the suggestions: each cluster's least confident
        to_check = sorted(i for rows in review_rows(label, confidence, len(names),
                                                    labeled=list(dev["rows"])).values()
                          for i in rows)
    needed |= {uris[i] for i in to_check}
    images = _load_images(needed, hashes)
    field = FIELDS.get(backbone)

    def patch(column: int) -> str:
        if field is None or column not in prototypes:
            return ""
        image_id, h, w = prototypes[column]
        image = images.get(uris[image_id])
        if image is None:
            return ""
        src = jpeg_uri(prototype_patch(image, field, h, w, image_size=image_size))
        return (f"<img src='{src}' alt='prototype {column}: receptive field of position ({h}, "
                f"{w}) in {html.escape(uris[image_id])}' title='{html.escape(uris[image_id])}'>")

    patches = {p["column"]: patch(p["column"]) for p in chosen}
    review = review_html(to_check, uris, [names[k] for k in label], confidence,
                         {u: _thumbnail(image) for u, image in images.items()},
                         sorted(set(names) | set(dev["labels"])))
    if nothing_to_check(confidence):  # listed for naming, not because they look wrong
        review = ("<details id='review-anyway'><summary>The least confident images anyway"
                  "</summary>" + review + "</details>")
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<title>goggles report</title>", f"<style>{STYLE}</style></head><body>",
             "<h1>goggles labeling report</h1>",
             verdict_html(metrics, confidence,
                          confidence[to_check],
                          named=bool(state.get("dev"))),
             review, "<h2 id='summary'>Summary</h2>", _table(summary_rows(metrics, state))]
    if metrics.get("warnings"):
        parts.append("<h2>Warnings</h2><ul>" + "".join(
            f"<li>{html.escape(w)}</li>" for w in metrics["warnings"]) + "</ul>")
    legend = " ".join(f"<span class='swatch' style='background:{c}'></span>{html.escape(n)} "
                      f"({int((label == k).sum())})" for k, (n, c) in enumerate(zip(names, colors,
                                                                                      strict=True)))
    if view is not None and view.pooled.size:
        heat = heatmap_image(view.pooled, view.row_clusters, view.column_clusters, colors)
        parts.append("<h2 id='affinity'>Affinity matrix sorted by cluster</h2>")
        parts.append(_figure("heatmap", f"<img class='heat' alt='affinity matrix' "
                                        f"src='{png_uri(heat)}'>",
                             "Rows: images, grouped by inferred cluster, most confident first. "
                             "Columns: prototypes, grouped by the cluster of their source image, "
                             "most discriminative first. Brighter = higher affinity "
                             f"({view.pooled.shape[0]} x {view.pooled.shape[1]} cells, each the "
                             f"mean of a group of A's entries).<br>{legend}", wide=True))
    if "confusion" in metrics:
        conf = metrics["confusion"]
        recall = metrics.get("per_class_recall", {})
        parts.append("<h2 id='confusion'>Confusion matrix</h2>")
        parts.append(_figure("confusion", confusion_svg(
            conf["matrix"], conf["labels"], conf["labels"],
            title="truth x predicted, after the best cluster→class mapping")))
        if recall:
            parts.append(_table([(f"recall of {k}", f"{v:.4f}") for k, v in recall.items()]))
    if coverage:
        parts.append("<h2 id='coverage'>Coverage and accuracy by confidence</h2><p class='note'>"
                     "The images <code>goggles export --min-confidence P</code> keeps, and the "
                     "accuracy of their labels (after the best cluster→class mapping).</p>"
                     "<table><tr><th>min confidence</th><th>images kept</th><th>coverage</th>"
                     "<th>accuracy of those kept</th></tr>" + "".join(
                         f"<tr><td>{c['min_confidence']:g}</td><td>{c['kept']}</td>"
                         f"<td>{c['coverage']:.4f}</td><td>" + ("–" if c["accuracy"] is None
                                                                 else f"{c['accuracy']:.4f}")
                         + "</td></tr>" for c in coverage) + "</table>")
    parts.append("<h2 id='convergence'>EM convergence</h2>")
    change, loglik = state.get("change_trace") or [], state.get("log_likelihood_trace") or []
    if len(change) == 1:
        parts.append("<p class='note'>EM stopped after its first iteration (its start was "
                     "already a fixed point): there is no trace to plot.</p>")
    elif change:
        ending = ("converged: the largest change of a posterior fell below tol"
                  if state.get("converged") else "stopped at max_iter without converging")
        parts.append(f"<p class='note'>{len(change)} iteration(s); {ending}.</p>"
                     "<div class='row'>" + _figure("trace", line_svg(
            [("largest change of a posterior", change, "#0072b2")], log_y=True,
            title="largest change of a posterior per iteration", xlabel="EM iteration"))
            + _figure("trace", line_svg([("log-likelihood", loglik, "#d55e00")],
                                        title="log-likelihood", xlabel="EM iteration"))
            + "</div>")
    else:
        method = html.escape(str(state.get("method")))
        parts.append(f"<p class='note'>No EM iterations: method {method} does not iterate.</p>")
    if view is not None and chosen:
        parts.append("<h2 id='prototypes'>Score distributions of the strongest prototypes</h2>"
                     "<p class='note'>Each prototype's affinity scores, split by the images' "
                     "inferred cluster, with the class-conditional Gaussians fitted by the "
                     "method (paper §4, Figure 5). The patch is the prototype's receptive field "
                     "in its source image; the box marks the filter-map cell.</p><div class='row'>")
        per = max(1, MAX_HISTOGRAMS // len(names))
        shown = [p for k in range(len(names)) for p in [q for q in chosen if q["class"] == k][:per]]
        for p in shown[:MAX_HISTOGRAMS]:
            column = view.column_ids.index(p["column"]) if p["column"] in view.column_ids else None
            if column is None:
                continue
            title = (f"prototype {p['column']} of {names[p['class']]}, "
                     f"separation {p['separation']:.2f}")
            svg = histogram_svg(view.columns[:, column], view.row_labels, np.asarray(p["mean"]),
                                np.asarray(p["std"]), colors, names, title=title)
            parts.append(_figure("histogram", svg + "<br>" + patches[p["column"]]))
        parts.append("</div>")
    parts.append("<h2 id='clusters'>Clusters</h2>")
    if not state.get("dev"):
        parts.append("<p class='note'>No dev labels named these clusters: name them in an "
                     "export (<code>goggles export OUT ... --names cluster_0=NAME,...</code>) "
                     "or label the images listed at the top and rerun.</p>")
    for k, name in enumerate(names):
        members = order[k]
        parts.append(f"<div class='cluster' style='border-color:{colors[k]}'><h3>"
                     f"<span class='swatch' style='background:{colors[k]}'></span>"
                     f"{html.escape(name)} — {len(members)} images</h3>")
        for title, rows in (("most confident", members[:PER_CLUSTER]),
                            ("least confident", members[::-1][:PER_CLUSTER])):
            figures = "".join(
                f"<figure><img src='{_thumbnail(images[uris[i]])}' alt='{html.escape(uris[i])}' "
                f"title='{html.escape(uris[i])}'><figcaption>{_confidence(confidence[i])}</figcaption>"
                "</figure>" for i in rows if uris[i] in images)
            parts.append(f"<div><b>{title}</b><br>{figures}</div>")
        strongest = "".join(f"<figure>{patches[p['column']]}<figcaption>separation "
                            f"{p['separation']:.2f}</figcaption></figure>"
                            for p in chosen if p["class"] == k and patches[p["column"]])
        if strongest:
            parts.append(f"<div><b>strongest prototypes</b> (receptive field, cell boxed)<br>"
                         f"{strongest}</div>")
        parts.append("</div>")
    given = json.dumps([[uris[i], name] for i, name in zip(dev["rows"], dev["labels"],
                                                           strict=True)]).replace("<", "\\u003c")
    parts.append(f"<script>var GOGGLES_DEV={given};\n{SCRIPT}"
                 "</script></body></html>")
    return "".join(parts)


def write_report(report_uri: str, metrics: dict[str, Any], *, labels_uri: str,
                 inference_uri: str, prototypes_uri: str, affinity_uris: list[str],
                 image_size: int = 224, manifest_uri: str = "",
                 affinity_sample: bool = False) -> str:
    """Render ``report.html`` from a run's artifacts; returns ``report_uri``. The backbone (for
    the receptive fields) is ``metrics["backbone"]``; the manifest's ground truth, when
    ``metrics`` has a ``cluster_to_class`` mapping, gives the coverage table. The affinity
    matrix is drawn from the shards at ``affinity_uris`` or, with ``affinity_sample``, from
    graph EM's sample of its rows (:class:`goggles.io.artifacts.SampleParts`)."""

    labels = storage.read_parquet(labels_uri).sort_by("image_id")
    state = storage.read_json(inference_uri)
    label = labels["label"].to_numpy()
    chosen = state.get("prototypes") or []
    view, drawn = None, {}
    try:
        protos = storage.read_parquet(prototypes_uri, columns=["prototype_id", "image_id", "h",
                                                                "w"]).sort_by("prototype_id")
        image_id = protos["image_id"].to_numpy()
        h, w = protos["h"].to_numpy(), protos["w"].to_numpy()
        drawn = {p["column"]: (int(image_id[p["column"]]), int(h[p["column"]]),
                               int(w[p["column"]])) for p in chosen}
        source: SampleParts | StoredShards = (SampleParts if affinity_sample
                                              else StoredShards)(affinity_uris)
        index = source.index if isinstance(source, SampleParts) else slice(None)
        view = affinity_view(source, label[index], labels["confidence"].to_numpy()[index],
                             label[image_id], sorted({p["column"] for p in chosen}))
    except Exception as error:  # noqa: BLE001 - the report degrades, it does not fail
        logger.warning("report: affinity matrix unavailable (%s)", error)
    coverage, hashes = None, None
    if manifest_uri:
        kept = accepted(storage.read_parquet(manifest_uri))
        hashes = dict(zip(kept["uri"].to_pylist(), kept["sha256"].to_pylist(), strict=True))
    if manifest_uri and "cluster_to_class" in metrics:
        truth = kept["label"].to_pylist()
        coverage = coverage_curve(truth, label, labels["confidence"].to_numpy(),
                                  cluster_classes(metrics["cluster_to_class"]))
    page = render(metrics, labels, state, view=view, prototypes=drawn,
                  backbone=str(metrics.get("backbone", "vgg16")), image_size=image_size,
                  coverage=coverage, hashes=hashes)
    storage.write_text(page, report_uri)
    return report_uri
