"""The report's plots, drawn without a plotting library: inline SVG for charts (small, crisp,
searchable text) and a PNG for the affinity heatmap. Every function returns markup or an image
and reads nothing from storage.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

# Okabe-Ito-like qualitative colours (colour-blind safe), then a fallback ramp for many clusters
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#d55e00", "#56b4e9", "#f0e442",
           "#000000")
FONT = "font-family='sans-serif' font-size='11'"


# Tableau's ten, for 9 or 10 clusters
PALETTE_10 = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
              "#ff9da7", "#9c755f", "#bab0ac")


def cluster_colors(num_classes: int) -> list[str]:
    """One colour per cluster (hex strings)."""
    if num_classes <= len(PALETTE):
        return list(PALETTE[:num_classes])
    if num_classes <= len(PALETTE_10):
        return list(PALETTE_10[:num_classes])
    hues = np.linspace(0, 1, num_classes, endpoint=False)
    out = []
    for hue in hues:  # HSV with full saturation and 0.8 value
        i, f = int(hue * 6), hue * 6 - int(hue * 6)
        p, q, t = 0.0, 1 - f, f
        r, g, b = [(1, t, p), (q, 1, p), (p, 1, t), (p, q, 1), (t, p, 1), (1, p, q)][i % 6]
        out.append(f"#{int(r * 204):02x}{int(g * 204):02x}{int(b * 204):02x}")
    return out


def png_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def jpeg_uri(image: Image.Image, quality: int = 82) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def viridis(values: np.ndarray) -> np.ndarray:
    """Map [0, 1] values to RGB along a viridis-like ramp ([..., 3] uint8)."""
    stops = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
                     dtype=np.float64)
    x = np.clip(np.nan_to_num(values), 0, 1) * (len(stops) - 1)
    low = np.floor(x).astype(int).clip(0, len(stops) - 2)
    frac = (x - low)[..., None]
    return (stops[low] * (1 - frac) + stops[low + 1] * frac).astype(np.uint8)


def _hex(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def heatmap_image(matrix: np.ndarray, row_clusters: np.ndarray, column_clusters: np.ndarray,
                  colors: Sequence[str], *, min_size: int = 320, band: int = 6) -> Image.Image:
    """The (sorted, pooled) affinity matrix as an image, contrast-stretched to its 1st–99th
    percentile, with a colour band per cluster along the left and top edges and white lines
    between clusters.

    Parameters
    ----------
    matrix : [R, C] values; rows and columns already sorted by cluster.
    row_clusters : [R] and column_clusters : [C], the cluster of each row and column.
    """
    low, high = np.percentile(matrix, [1, 99]) if matrix.size else (0.0, 1.0)
    pixels = viridis((matrix - low) / max(high - low, 1e-9))
    scale_r = max(1, math.ceil(min_size / max(1, matrix.shape[0])))
    scale_c = max(1, math.ceil(min_size / max(1, matrix.shape[1])))
    pixels = np.repeat(np.repeat(pixels, scale_r, axis=0), scale_c, axis=1)
    height, width = pixels.shape[:2]
    canvas = Image.new("RGB", (width + band, height + band), "white")
    canvas.paste(Image.fromarray(pixels, mode="RGB"), (band, band))
    draw = ImageDraw.Draw(canvas)
    for clusters, scale, vertical in ((row_clusters, scale_r, True),
                                      (column_clusters, scale_c, False)):
        edges = np.flatnonzero(np.diff(clusters)) + 1
        starts = np.concatenate([[0], edges])
        stops = np.concatenate([edges, [len(clusters)]])
        for start, stop in zip(starts, stops, strict=True):
            color = _hex(colors[int(clusters[start]) % len(colors)])
            a, b = band + start * scale, band + stop * scale - 1
            if vertical:
                draw.rectangle((0, a, band - 2, b), fill=color)
                if start:
                    draw.line((band, a, band + width, a), fill="white", width=1)
            else:
                draw.rectangle((a, 0, b, band - 2), fill=color)
                if start:
                    draw.line((a, band, a, band + height), fill="white", width=1)
    return canvas


def _svg(width: int, height: int, body: str, label: str) -> str:
    return (f"<svg class='plot' role='img' aria-label='{html.escape(label)}' "
            f"xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
            f"viewBox='0 0 {width} {height}'>{body}</svg>")


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def histogram_svg(scores: np.ndarray, labels: np.ndarray, means: np.ndarray, stds: np.ndarray,
                  colors: Sequence[str], names: Sequence[str], *, title: str,
                  bins: int = 30, width: int = 360, height: int = 200) -> str:
    """Class-conditional histograms of one prototype's scores with the fitted Gaussians.

    Parameters
    ----------
    scores : [N] the prototype's column of A; labels : [N] cluster of each image.
    means, stds : [K] the prototype's fitted Gaussian per cluster; each curve is scaled to its
        cluster's count so it overlays that cluster's bars.
    """
    left, right, top, bottom = 36, 8, 32, 30
    low, high = float(scores.min()), float(scores.max())
    pad = max(high - low, 1e-3) * 0.05
    low, high = low - pad, high + pad
    edges = np.linspace(low, high, bins + 1)
    widthp, heightp = width - left - right, height - top - bottom
    counts = [np.histogram(scores[labels == k], edges)[0] for k in range(len(names))]
    grid = np.linspace(low, high, 120)
    curves = []
    for k in range(len(names)):
        n_k = int((labels == k).sum())
        sd = max(float(stds[k]), 1e-6)
        density = np.exp(-0.5 * ((grid - means[k]) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
        curves.append(density * n_k * (edges[1] - edges[0]))
    peak = max([1.0] + [float(c.max()) for c in counts] + [float(c.max()) for c in curves])

    def x(v: float) -> float:
        return left + (v - low) / (high - low) * widthp

    def y(v: float) -> float:
        return top + heightp - v / peak * heightp

    parts = [f"<text x='{left}' y='12' {FONT} font-weight='bold'>{html.escape(title)}</text>"]
    bar = widthp / bins
    for k, count in enumerate(counts):
        for i, c in enumerate(count):
            if c:
                parts.append(f"<rect x='{x(edges[i]):.1f}' y='{y(c):.1f}' width='{bar:.1f}' "
                             f"height='{y(0) - y(c):.1f}' fill='{colors[k]}' fill-opacity='0.45'>"
                             f"<title>{html.escape(names[k])}: {c}</title></rect>")
    for k, curve in enumerate(curves):
        points = " ".join(f"{x(g):.1f},{y(v):.1f}" for g, v in zip(grid, curve, strict=True))
        parts.append(f"<polyline points='{points}' fill='none' stroke='{colors[k]}' "
                     f"stroke-width='2'><title>{html.escape(names[k])}: N({means[k]:.3f}, "
                     f"{stds[k]:.3f}²)</title></polyline>")
    parts.append(f"<line x1='{left}' y1='{y(0)}' x2='{left + widthp}' y2='{y(0)}' "
                 "stroke='#333'/>")
    for t in _ticks(low, high):
        parts.append(f"<text x='{x(t):.1f}' y='{height - 16}' {FONT} text-anchor='middle'>"
                     f"{t:g}</text>")
    parts.append(f"<text x='{left + widthp / 2}' y='{height - 3}' {FONT} "
                 "text-anchor='middle'>affinity score</text>")
    parts.append(f"<text x='4' y='{top + 8}' {FONT}>{int(peak)}</text>")
    offset = left
    for k, name in enumerate(names):  # legend under the title
        short = html.escape(name[:18])
        parts.append(f"<rect x='{offset}' y='18' width='9' height='9' fill='{colors[k]}'/>"
                     f"<text x='{offset + 12}' y='26' {FONT}>{short}</text>")
        offset += 20 + 6 * len(name[:18])
    return _svg(width, height, "".join(parts), title)


def line_svg(series: Sequence[tuple[str, Sequence[float], str]], *, title: str, xlabel: str,
             log_y: bool = False, width: int = 420, height: int = 220) -> str:
    """A line chart of one or more series against 1..n (``(name, values, colour)`` each);
    ``log_y`` plots log10 of the (positive) values."""
    left, right, top, bottom = 76, 10, 20, 32
    data = []
    for name, values, color in series:
        v = np.asarray(values, dtype=np.float64)
        if log_y:
            v = np.log10(np.maximum(v, 1e-16))
        data.append((name, v, color))
    every = np.concatenate([v for _, v, _ in data]) if data else np.zeros(1)
    low, high = float(every.min()), float(every.max())
    if high - low < 1e-12:
        low, high = low - 1, high + 1
    n = max(len(v) for _, v, _ in data) if data else 1
    widthp, heightp = width - left - right, height - top - bottom

    def x(i: float) -> float:
        return left + (i - 1) / max(n - 1, 1) * widthp

    def y(v: float) -> float:
        return top + heightp - (v - low) / (high - low) * heightp

    parts = [f"<text x='{left}' y='13' {FONT} font-weight='bold'>{html.escape(title)}</text>",
             f"<rect x='{left}' y='{top}' width='{widthp}' height='{heightp}' fill='none' "
             "stroke='#999'/>"]
    ticks = _ticks(low, high, 4)
    if log_y:
        ticks = sorted({float(round(t)) for t in ticks if low <= round(t) <= high}) or [
            float(round(low))]
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    for t in ticks:
        label = f"1e{int(t)}" if log_y else f"{t:,.{decimals}f}"
        parts.append(f"<text x='{left - 4}' y='{y(t) + 4:.1f}' {FONT} text-anchor='end'>"
                     f"{label}</text>")
    for t in _ticks(1, n, 5):
        if float(t).is_integer():
            parts.append(f"<text x='{x(t):.1f}' y='{height - 18}' {FONT} "
                         f"text-anchor='middle'>{int(t)}</text>")
    parts.append(f"<text x='{left + widthp / 2}' y='{height - 4}' {FONT} "
                 f"text-anchor='middle'>{html.escape(xlabel)}</text>")
    for name, v, color in data:
        points = " ".join(f"{x(i + 1):.1f},{y(val):.1f}" for i, val in enumerate(v))
        parts.append(f"<polyline points='{points}' fill='none' stroke='{color}' "
                     f"stroke-width='2'><title>{html.escape(name)}</title></polyline>")
        for i, val in enumerate(v):
            shown = 10 ** val if log_y else val
            parts.append(f"<circle cx='{x(i + 1):.1f}' cy='{y(val):.1f}' r='2.5' "
                         f"fill='{color}'><title>{html.escape(name)} {i + 1}: {shown:.4g}"
                         "</title></circle>")
    return _svg(width, height, "".join(parts), title)


def confusion_svg(matrix: Sequence[Sequence[int]], row_names: Sequence[str],
                  column_names: Sequence[str], *, title: str, cell: int = 44) -> str:
    """A confusion matrix: counts in cells shaded by the row's share (rows: truth)."""
    counts = np.asarray(matrix, dtype=np.int64)
    label_w = min(220, 12 + 6 * max([len(n) for n in row_names] + [4]))
    head_h = min(150, 26 + 5 * max([min(len(n), 28) for n in column_names] + [4]))
    # rotated column names reach up and to the right by about their height
    width = max(label_w + cell * counts.shape[1] + head_h, 7 * len(title) + 10)
    height = head_h + cell * counts.shape[0] + 24
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    parts = [f"<text x='4' y='13' {FONT} font-weight='bold'>{html.escape(title)}</text>"]
    for j, name in enumerate(column_names):
        cx = label_w + j * cell + cell / 2
        parts.append(f"<text transform='translate({cx - 4:.1f},{head_h - 6}) rotate(-40)' "
                     f"{FONT}>{html.escape(name[:28])}</text>")
    for i, name in enumerate(row_names):
        cy = head_h + i * cell + cell / 2 + 4
        parts.append(f"<text x='{label_w - 6}' y='{cy:.1f}' {FONT} text-anchor='end'>"
                     f"{html.escape(name[:34])}</text>")
        for j in range(counts.shape[1]):
            rgb = viridis(np.array([shares[i, j]]))[0]
            text = "white" if shares[i, j] < 0.6 else "black"
            parts.append(f"<rect x='{label_w + j * cell}' y='{head_h + i * cell}' "
                         f"width='{cell - 1}' height='{cell - 1}' "
                         f"fill='rgb({rgb[0]},{rgb[1]},{rgb[2]})'><title>truth "
                         f"{html.escape(name)}, predicted {html.escape(column_names[j])}: "
                         f"{counts[i, j]}</title></rect>"
                         f"<text x='{label_w + j * cell + cell / 2 - 0.5}' y='{cy:.1f}' {FONT} "
                         f"fill='{text}' text-anchor='middle'>{counts[i, j]}</text>")
    parts.append(f"<text x='{label_w}' y='{height - 6}' {FONT}>rows: truth, columns: predicted"
                 "</text>")
    return _svg(width, height, "".join(parts), title)
