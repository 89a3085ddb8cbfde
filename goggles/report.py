"""report.html: a self-contained page (images inlined) that shows people what the run found.

Summary figures, accuracy when ground truth exists, the affinity matrix sorted by inferred
cluster (paper Figure 5), the EM trace, and the most and least confident images of each cluster.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from typing import Any

import numpy as np
from PIL import Image

from goggles import storage
from goggles.ingest import decode_image

logger = logging.getLogger(__name__)

MAX_HEATMAP = 600
THUMB = 96


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _jpeg(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _viridis(values: np.ndarray) -> np.ndarray:
    """Map [0, 1] values to RGB with a small viridis-like ramp, [..., 3] uint8."""
    stops = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
                     dtype=np.float64)
    x = np.clip(values, 0, 1) * (len(stops) - 1)
    low = np.floor(x).astype(int).clip(0, len(stops) - 2)
    frac = (x - low)[..., None]
    return (stops[low] * (1 - frac) + stops[low + 1] * frac).astype(np.uint8)


def heatmap_indices(row_labels: np.ndarray, column_labels: np.ndarray,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of A to draw: sorted by cluster, every s-th so that at most
    ``MAX_HEATMAP`` of each remain."""
    rows = np.argsort(row_labels, kind="stable")
    cols = np.argsort(column_labels, kind="stable")
    step_r = max(1, int(np.ceil(len(rows) / MAX_HEATMAP)))
    step_c = max(1, int(np.ceil(len(cols) / MAX_HEATMAP)))
    return rows[::step_r], cols[::step_c]


def affinity_heatmap(sub: np.ndarray) -> Image.Image:
    """An image of the (already sorted and downsampled) affinity matrix, contrast-stretched to
    its 1st-99th percentile."""
    low, high = np.percentile(sub, [1, 99]) if sub.size else (0.0, 1.0)
    scaled = (sub - low) / max(high - low, 1e-9)
    image = Image.fromarray(_viridis(scaled), mode="RGB")
    return image.resize((max(200, image.width), max(200, image.height)), Image.Resampling.NEAREST)


def _thumbnail(uri: str) -> str | None:
    try:
        image = decode_image(storage.read_bytes(uri), max_pixels=64_000_000)
    except Exception:  # noqa: BLE001 - a missing thumbnail must not fail the report
        return None
    image.thumbnail((THUMB, THUMB))
    return _jpeg(image)


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in rows)
    return f"<table>{body}</table>"


def render(metrics: dict[str, Any], labels: Any, heatmap: np.ndarray | None,
           state: dict[str, Any], per_cluster: int = 6) -> str:
    """The report page. ``heatmap`` is A's rows and columns sorted by cluster, downsampled."""
    names = state["cluster_names"]
    label = labels["label"].to_numpy()
    confidence = labels["confidence"].to_numpy()
    uris = labels["uri"].to_pylist()
    summary = [("images", metrics.get("n_images")), ("rejected", metrics.get("n_rejected")),
               ("classes", metrics.get("num_classes")),
               ("prototypes", metrics.get("num_prototypes")), ("method", metrics.get("method")),
               ("EM iterations", metrics.get("em_iterations")),
               ("converged", metrics.get("converged"))]
    if "accuracy" in metrics:
        summary += [("accuracy", f"{metrics['accuracy']:.4f}"),
                    ("accuracy of the k-means start", f"{metrics['accuracy_kmeans']:.4f}")]
    for stage, seconds in (metrics.get("timings_s") or {}).items():
        summary.append((f"{stage} (s)", seconds))
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>goggles report</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
             "padding:4px 8px;text-align:left}.thumbs img{margin:2px;border:1px solid #999}"
             "figure{display:inline-block;margin:4px;text-align:center;font-size:11px}"
             "</style></head><body>",
             "<h1>goggles labeling report</h1>", "<h2>Summary</h2>", _table(summary)]
    if metrics.get("warnings"):
        parts.append("<h2>Warnings</h2><ul>" + "".join(
            f"<li>{html.escape(w)}</li>" for w in metrics["warnings"]) + "</ul>")
    if "confusion" in metrics:
        conf = metrics["confusion"]
        head = "".join(f"<th>{html.escape(n)}</th>" for n in conf["labels"])
        body = "".join(
            f"<tr><th>{html.escape(n)}</th>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>"
            for n, row in zip(conf["labels"], conf["matrix"], strict=True))
        parts.append("<h2 id='confusion'>Confusion matrix (rows: truth, columns: predicted, after "
                     f"the best cluster→class mapping)</h2><table><tr><th></th>{head}</tr>"
                     f"{body}</table>")
    if heatmap is not None and heatmap.size:
        heat = affinity_heatmap(heatmap)
        parts.append("<h2 id='affinity'>Affinity matrix, rows (images) and columns (prototypes) "
                     "sorted by cluster</h2>"
                     f"<img alt='affinity heatmap' src='{_png(heat)}' style='max-width:100%'>")
    trace = state.get("change_trace") or []
    if trace:
        rows = [(f"iteration {i + 1}", f"{c:.3e}") for i, c in enumerate(trace)]
        parts.append("<h2>EM convergence (mean change of the posteriors)</h2>" + _table(rows))
    parts.append("<h2>Clusters</h2>")
    for k, name in enumerate(names):
        members = np.flatnonzero(label == k)
        order = members[np.argsort(-confidence[members], kind="stable")]
        parts.append(f"<h3>{html.escape(name)} — {len(members)} images</h3>")
        for title, chosen in (("most confident", order[:per_cluster]),
                              ("least confident", order[::-1][:per_cluster])):
            figures = []
            for i in chosen:
                src = _thumbnail(uris[i])
                if src:
                    figures.append(f"<figure><img src='{src}' alt='{html.escape(uris[i])}'>"
                                   f"<figcaption>{confidence[i]:.3f}</figcaption></figure>")
            parts.append(f"<div class='thumbs'><b>{title}</b><br>{''.join(figures)}</div>")
    parts.append("</body></html>")
    return "".join(parts)


def write_report(report_uri: str, metrics: dict[str, Any], *, labels_uri: str,
                 inference_uri: str, prototypes_uri: str, affinity_uris: list[str]) -> str:
    """Render ``report.html`` from a run's artifacts; returns ``report_uri``."""
    from goggles.blocks import StoredShards, gather

    labels = storage.read_parquet(labels_uri).sort_by("image_id")
    state = storage.read_json(inference_uri)
    try:
        protos = storage.read_parquet(prototypes_uri, columns=["prototype_id", "image_id"])
        source_index = protos.sort_by("prototype_id")["image_id"].to_numpy()
        label = labels["label"].to_numpy()
        rows, cols = heatmap_indices(label, label[source_index])
        heatmap: np.ndarray | None = gather(StoredShards(affinity_uris), rows, cols)
    except Exception as error:  # noqa: BLE001 - the report degrades, it does not fail
        logger.warning("report: affinity matrix unavailable (%s)", error)
        heatmap = None
    storage.write_text(render(metrics, labels, heatmap, state), report_uri)
    return report_uri
