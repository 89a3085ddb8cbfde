"""What each task of a cluster run costs at N images: pods, bytes read and written, peak memory
and seconds, from per-image and per-entry sizes and rates (``goggles plan``; the benchmark
``benchmarks/pod_reads.py`` measures the sizes on real artifacts and prints the same model).

KFP's launcher downloads every input artifact of a task into its pod, so a pod reads all of each
artifact it takes. The tasks and their inputs are those :mod:`goggles.kubeflow.pipeline` wires
with the default parameters (graph EM, no end model): list-source, one ingest task per slice
of the listing (as many as row shards), join-manifest, plan, one extract and one affinity task
per row shard, gather, infer (the fit on graph EM's sample), one label task per row shard,
gather-labels, evaluate. The sizes default to docs/scale.md's
measurement (VGG-16 on 32 cub-dev images, :data:`MEASURED`); the rates to the figures measured on
a 2-core CPU there (:data:`RATES`), so the seconds are CPU seconds of such a pod (``gpu``: extract
and affinity at the assumed GPU rates).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from goggles.features.budget import part_share, prototype_budget
from goggles.parameters import MAX_SHARDS, default

MEASURED: dict[str, float] = {
    "image": 8_890.0,  # a cub-dev JPEG
    "manifest": 172.0,  # one manifest row
    "maps": 100_000.0,  # one image's VGG-16 filter maps (512 x 7 x 7 float32)
    "descriptors": 16_400.0,  # one image's descriptors (both networks, float32)
    "logits": 0.0,  # ImageNet logits (VGG-16's torchvision weights: none)
    "candidates": 2_840.0,  # one image's prototype candidates
    "prototype": 948.0,  # one prototype row of prototypes.parquet
    "affinity_entry": 4.0,  # one float32 entry of A
    "prototypes_per_image": 3.0,  # prototypes found per image at top_k=5
    "label": 120.0,  # one row of labels.parquet
}
"""Bytes per unit, docs/scale.md ("What each pod reads"); ``benchmarks/pod_reads.py`` measures
them again."""

RATES: dict[str, float] = {
    "extract_s_per_image": 0.2,  # VGG-16 + MobileNetV2 on 2 CPU cores (6.11 images/s + 25%)
    "extract_gpu_s_per_image": 1 / 2000,  # assumed, not measured
    "affinity_s_per_entry": 3.2e-7,  # benchmarks/scale.py: 100k x 2,048 in 65.9 s
    "affinity_gpu_s_per_entry": 3.2e-9,  # assumed: 100x the CPU rate
    "infer_flops_per_s": 7.6e10,  # graph EM's pass beyond its sample: 0.9 h at 1M x 2,048
    "infer_fit_s": 150.0,  # graph EM's fit on its 20,000-image sample
    "io_bytes_per_s": 2e8,  # reading or writing artifacts
    "process_bytes": 1.5e9,  # python, torch and the networks of one task
}
"""Seconds per unit of work, from docs/scale.md's measurements."""

GRAPH_SAMPLE = 20_000
"""Images graph EM builds its graph on (:class:`goggles.inference.graph_em.GraphEM`'s
``max_rows``)."""
REPORT_ROWS = 2_000
"""Rows of A evaluate reads for the report (:data:`goggles.pipeline.fanout.REPORT_ROWS`)."""
IMAGES_PER_SHARD = 10_240
"""``recommended_shards``: row shards of about this many images (≈ 1 GB of filter maps), as
many as keep each label task's reads (the fit, about 1 GB at 20,000 prototypes, and its rows of
A) under 2 GB: fewer, larger shards mean fewer pods each reading the fit."""


@dataclass(frozen=True)
class TaskCost:
    """One kind of task: ``pods`` of it, and per pod ``bytes_read``, ``bytes_written``,
    ``peak_memory_bytes``, ``seconds``; ``reads`` says what."""

    task: str
    pods: int
    bytes_read: float
    bytes_written: float
    peak_memory_bytes: float
    seconds: float
    reads: str

    def to_dict(self) -> dict[str, Any]:
        return {key: (round(value) if isinstance(value, float) else value)
                for key, value in asdict(self).items()}


GRAPH_BLOCK = 2048
"""Rows of graph EM's neighbour search at a time
(:func:`goggles.inference.graph.neighbour_lists`)."""


def recommended_shards(n_images: int) -> int:
    """Row shards for ``n_images``: one per :data:`IMAGES_PER_SHARD` images, at most
    ``MAX_SHARDS``."""
    return max(1, min(MAX_SHARDS, math.ceil(n_images / IMAGES_PER_SHARD)))


def plan(n_images: int, *, num_classes: int = 2, shards: int = 0,
         max_prototypes: int | None = None, top_k: int | None = None, gpu: bool = False,
         sizes: Mapping[str, float] | None = None,
         rates: Mapping[str, float] | None = None) -> list[TaskCost]:
    """Every task kind of a run at ``n_images`` images and ``num_classes`` classes over
    ``shards`` row shards (0: :func:`recommended_shards`), with the prototype cap
    ``max_prototypes`` asks for (``None``: the default, :mod:`goggles.features.budget`) and
    graph EM, the default method (its fit reads a sample of at most :data:`GRAPH_SAMPLE`
    images: :mod:`goggles.pipeline.fanout`)."""
    if n_images < 1:
        raise ValueError(f"n_images must be at least 1, got {n_images}")
    b = {**MEASURED, **(sizes or {})}
    r = {**RATES, **(rates or {})}
    n = float(n_images)
    s = shards or recommended_shards(n_images)
    rows = math.ceil(n / s)  # images per shard
    requested = default("max_prototypes") if max_prototypes is None else max_prototypes
    k = default("top_k") if top_k is None else top_k
    found = b["prototypes_per_image"] * n
    cap = prototype_budget(requested, n_images, num_classes).cap
    m = min(found, cap) if cap else found
    kept = found * part_share(cap, n_images, k)  # the candidates the parts keep for the gather
    candidate = b["candidates"] / b["prototypes_per_image"]  # bytes of one candidate
    manifest, prototypes = n * b["manifest"], m * b["prototype"]
    described = b["descriptors"] + b["logits"]  # per image
    entry = b["affinity_entry"]
    labels = n * (b["label"] + 8 * num_classes)
    label_parts = rows * (8 * num_classes + 16)
    io, base = r["io_bytes_per_s"], r["process_bytes"]
    extract_rate = r["extract_gpu_s_per_image" if gpu else "extract_s_per_image"]
    affinity_rate = r["affinity_gpu_s_per_entry" if gpu else "affinity_s_per_entry"]
    sample = min(n, GRAPH_SAMPLE)
    view = min(sample, REPORT_ROWS)
    dims = b["descriptors"] / 4
    sample_parts = sample * (m * entry + described)
    fit_state = sample * (m + dims) * 2 + sample * (8 * num_classes + 16) + m * num_classes * 24
    beyond = 2 * sample * (m + dims) * rows / r["infer_flops_per_s"]  # one label task

    def task(name: str, pods: int, read: float, written: float, memory: float,
             compute: float, what: str) -> TaskCost:
        return TaskCost(name, pods, read, written, base + memory,
                        compute + (read + written) / io, what)

    return [
        task("list-source", 1, 0.0, 200.0, 0.0, 1e-4 * n, "the listing"),
        task("ingest", s, rows * b["image"], rows * b["manifest"], rows * b["manifest"],
             1e-3 * rows, "its slice of the images"),
        task("join-manifest", 1, manifest, manifest, 2 * manifest, 1e-5 * n,
             "every slice's manifest rows"),
        task("plan", 1, manifest, 100.0 * s + 8 * (sample + view), manifest, 1.0,
             "the manifest"),
        task("extract", s, manifest + rows * b["image"],
             rows * (b["maps"] + 2 * described) + kept / s * candidate,
             manifest + 32 * b["maps"], rows * extract_rate, "manifest + its shard's images"),
        task("gather", 1, kept * candidate, prototypes, kept * candidate + prototypes,
             1e-5 * n, "the candidates the parts kept"),
        task("affinity", s, rows * (b["maps"] + described) + prototypes + 8 * (sample + view),
             rows * (m * entry + b["descriptors"]) + sample_parts / s + view * m * entry / s,
             rows * (b["maps"] + m * entry) + prototypes, rows * m * affinity_rate,
             "its shard's filter maps + prototypes"),
        # the fit streams the sample's parts into one float32 copy of its unit-length rows and
        # descriptors; the graph's neighbours come 2,048 rows at a time (similarities, ranks)
        task("infer", 1, sample_parts + prototypes + 8 * sample, fit_state,
             sample * (m + 3 * dims) * 4 + GRAPH_BLOCK * sample * 16,
             r["infer_fit_s"], "the sample's rows of A + descriptors"),
        task("label", s, fit_state + rows * (m * entry + b["descriptors"]), label_parts,
             sample * (m + dims) * 4 + rows * (m * entry + b["descriptors"]), beyond,
             "its shard's rows of A + the fit"),
        task("gather-labels", 1, manifest + fit_state + s * label_parts + prototypes,
             labels + 8 * n, manifest + labels + n * (8 * num_classes + 16), 1e-5 * n,
             "manifest + the fit + every label part"),
        task("evaluate", 1, manifest + prototypes + view * m * entry + labels + 8 * n, 1e6,
             view * m * entry + labels + manifest, 1e-4 * n,
             "manifest + prototypes + the view's rows of A + labels"),
    ]


def totals(costs: list[TaskCost]) -> dict[str, float]:
    """Sums over every pod: ``bytes_read``, ``bytes_written``, ``seconds``."""
    return {key: sum(getattr(c, key) * c.pods for c in costs)
            for key in ("bytes_read", "bytes_written", "seconds")}


def human(count: float) -> str:
    """``count`` bytes in decimal units: 1.23 GB."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if count < 1000:
            return f"{count:.3g} {unit}"
        count /= 1000
    return f"{count:.3g} PB"


def table(costs: list[TaskCost]) -> str:
    """A Markdown table of ``costs`` with the sums over all pods."""
    lines = ["| task | pods | reads | read per pod | written per pod | peak memory | seconds "
             "per pod |", "|---|---|---|---|---|---|---|"]
    for c in costs:
        lines.append(f"| {c.task} | {c.pods} | {c.reads} | {human(c.bytes_read)} | "
                     f"{human(c.bytes_written)} | {human(c.peak_memory_bytes)} | "
                     f"{c.seconds:,.0f} |")
    total = totals(costs)
    lines.append(f"| all pods | {sum(c.pods for c in costs)} | | {human(total['bytes_read'])} | "
                 f"{human(total['bytes_written'])} | | {total['seconds']:,.0f} |")
    return "\n".join(lines)
