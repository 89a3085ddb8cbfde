"""The report's plots: well-formed SVG with the marks they promise, and the heatmap image."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np

from goggles.report.plots import (
    cluster_colors,
    confusion_svg,
    heatmap_image,
    histogram_svg,
    line_svg,
    viridis,
)

SVG = "{http://www.w3.org/2000/svg}"


def _parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg" and root.get("class") == "plot"
    return root


def test_viridis_ends_and_clipping() -> None:
    ramp = viridis(np.array([-1.0, 0.0, 1.0, 2.0, np.nan]))
    assert ramp[0].tolist() == ramp[1].tolist() == [68, 1, 84]
    assert ramp[2].tolist() == ramp[3].tolist() == [253, 231, 37]
    assert ramp[4].tolist() == [68, 1, 84]


def test_cluster_colors_are_distinct_for_many_clusters() -> None:
    for k in (2, 8, 13):
        colors = cluster_colors(k)
        assert len(colors) == len(set(colors)) == k
        assert all(len(c) == 7 and c.startswith("#") for c in colors)


def test_heatmap_has_cluster_bands_and_boundaries() -> None:
    matrix = np.zeros((4, 6))
    matrix[:2, :3] = 1.0
    matrix[2:, 3:] = 1.0
    image = heatmap_image(matrix, np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1, 1, 1]),
                          ["#ff0000", "#0000ff"], min_size=60, band=6)
    pixels = np.asarray(image)
    scale_r, scale_c = 15, 10
    assert image.size == (6 + 6 * scale_c, 6 + 4 * scale_r)
    assert pixels[6 + 5, 2].tolist() == [255, 0, 0]  # left band, first cluster
    assert pixels[6 + 3 * scale_r, 2].tolist() == [0, 0, 255]
    assert pixels[2, 6 + 5 * scale_c].tolist() == [0, 0, 255]  # top band, second cluster
    assert pixels[6 + 2 * scale_r, 6 + 1].tolist() == [255, 255, 255]  # boundary line
    assert pixels[6 + 5, 6 + 5].tolist() == [253, 231, 37]  # bright block
    assert pixels[6 + 5, 6 + 4 * scale_c].tolist() == [68, 1, 84]  # dark block


def test_histogram_draws_bars_per_cluster_and_one_curve_each() -> None:
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(0.3, 0.05, 50), rng.normal(0.7, 0.05, 30)])
    labels = np.repeat([0, 1], [50, 30])
    svg = histogram_svg(scores, labels, np.array([0.3, 0.7]), np.array([0.05, 0.05]),
                        ["#111111", "#222222"], ["a", "b"], title="prototype 3", bins=20)
    root = _parse(svg)
    curves = root.findall(f"{SVG}polyline")
    assert [c.get("stroke") for c in curves] == ["#111111", "#222222"]
    bars = [r for r in root.findall(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    counts = {}
    for bar in bars:
        name, count = bar.find(f"{SVG}title").text.split(": ")  # type: ignore[union-attr]
        counts[name] = counts.get(name, 0) + int(count)
    assert counts == {"a": 50, "b": 30}
    assert "prototype 3" in svg


def test_line_chart_uses_whole_powers_of_ten_on_a_log_axis() -> None:
    svg = line_svg([("change", [1.0, 0.1, 1e-3, 1e-6], "#000000")], title="t", xlabel="it",
                   log_y=True)
    root = _parse(svg)
    labels = [t.text for t in root.iter(f"{SVG}text") if t.text and t.text.startswith("1e")]
    assert labels and all(float(label[2:]).is_integer() for label in labels)
    assert len(root.findall(f"{SVG}circle")) == 4


def test_confusion_shows_every_count() -> None:
    svg = confusion_svg([[5, 1], [0, 7]], ["x", "y"], ["x", "y"], title="c")
    root = _parse(svg)
    texts = [t.text for t in root.iter(f"{SVG}text")]
    for value in ("5", "1", "0", "7"):
        assert value in texts
