"""Labeling accuracy on real birds (cub-dev), drawn the way the paper does (§5.1), and on the
other domains (issue 16: CIFAR-10's 32x32 images, TrashNet's photographs of rubbish).

    python benchmarks/accuracy.py [--seed 0] [--tasks paper|hard|all] [--backbone vgg16]
    python benchmarks/accuracy.py --tasks cifar|trash [--image-size 224]
    python benchmarks/accuracy.py --tasks all --seeds 10 [--method graph-em]
    python benchmarks/accuracy.py --methods all [--seeds 10] [--labeler auto]

10 random species pairs and 6 random 3-5-class sets (fixed seed); ``--tasks hard`` adds the
same-family pairs; ``--tasks cifar`` is cifar10-dev's cat/dog, airplane/ship, automobile/truck
and deer/horse pairs and its 10-class task, ``--tasks trash`` trash-dev's 5-class task: for
those, a second table sets the default beside k-means on each of its views alone (the affinity
rows, each network's descriptors) and a 5-fold logistic-regression probe on all of them, the
supervised ceiling (:mod:`benchmarks.views`).

Each row gives the accuracy of ``--method`` (default: the library's default, graph-em)
and of its k-means initialisation, and the calibration of its probabilities: ECE (15 bins)
and Brier score against the truth; for the confidence column (``labels.parquet``'s), its ECE
(``cECE``) beside ``floor``, the ECE a perfectly calibrated confidence with the same values
would score on that many images (ECE is biased upwards on small tasks). With ``--seeds N``
every task is fitted with N
inference seeds: the table then shows means and, per task, the worst difference between the
method and its own k-means start, in images (issue 10: never more than one image below).
``--methods`` (``all`` or a comma list of em, kmeans, em-random, pgm,
backbone) prints the layout of the paper's Tables 1 and 2 instead: per task, the accuracy of
each method, the median over ``--seeds`` inference seeds for the ones that draw random numbers
(k-means restarts, random starts, the PGM discretisation's k-means), as §5.1 does; AF+PGM on the
binary tasks only, as in the paper (``--pgm-tasks all`` adds the multi-class ones). The
``backbone`` column is the ImageNet classifier of ``--labeler`` applied to its filter maps
(``auto``: the benchmark's backbone when its weights carry the classifier, else MobileNetV2,
whose packaged weights do; see goggles/baselines.py).

``--dev-per-class N`` gives N images of each class, drawn at random within the class, as dev
labels (seeds of inference), and scores the other images. ``--dev-from report`` labels instead
exactly what the tool asks for (the report's list, ``goggles suggest``): ``--dev-per-class``
times K images in rounds of the list's size, each round given the earlier rounds' labels, each
image labeled with its true class (the person may name any class).

Each image goes through the CNN once (filter maps are cached under ``$GOGGLES_BENCH_CACHE``,
default ~/.cache/goggles-bench; the extract column is the measured seconds per image of that
pass times N); prototypes, affinity and inference run per task with the library's own
functions. Prints a table (task, N, M, accuracy_kmeans, accuracy, seconds per
stage) and the paper's reference averages.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import datasets  # noqa: E402
from benchmarks.datasets import Task, task_id  # noqa: E402
from benchmarks.views import print_views, unit_rows, view_scores  # noqa: E402
from goggles.features.affinity import affinity_block  # noqa: E402
from goggles.features.prototypes import select_prototypes  # noqa: E402
from goggles.inference.base import label_confidence  # noqa: E402
from goggles.inference.config import InferConfig  # noqa: E402
from goggles.inference.registry import create, fit_method  # noqa: E402
from goggles.inference.seeds import Seeds  # noqa: E402
from goggles.io.features_folder import FilterMaps  # noqa: E402
from goggles.parameters import default  # noqa: E402
from goggles.report.evaluation import (  # noqa: E402
    calibration,
    confidence_quality,
    dev_set_metrics,
    evaluate,
    name_clusters,
)

PAPER = {"binary": 0.9809, "multi": 0.9293}
# the paper's CUB averages per column (Tables 1 and 2); VGG-16 was scored on 1 of the 10 pairs
PAPER_TABLE1 = {"backbone": 0.9545, "pgm": 0.7079, "kmeans": 0.9796, "em-random": 0.9547,
                "em": 0.9809}
PAPER_TABLE2 = {"kmeans": 0.9315, "em": 0.9293}
METHOD_NAMES = {"backbone": "backbone", "pgm": "AF+PGM", "kmeans": "AF+KM",
                "em-random": "AF+EM rand", "em": "AF+EM", "graph-em": "graph EM"}
ALL_METHODS = ("backbone", "pgm", "kmeans", "em-random", "em", "graph-em")


def as_filter_maps(maps: np.ndarray, backbone: str) -> FilterMaps:
    def blocks() -> Iterator[np.ndarray]:
        yield maps

    return FilterMaps(backbone, blocks)


def task_descriptors(task: Task, maps: np.ndarray,
                     second: dict[str, np.ndarray] | None) -> list[np.ndarray]:
    """Graph EM's descriptors, as the extract stage writes them: of the backbone's maps and of
    the second network's (``second``: its cached maps by species), when there is one."""
    from goggles.features.descriptors import bilinear_descriptors

    out = [bilinear_descriptors(maps)]
    if second is not None:
        out.append(bilinear_descriptors(np.concatenate([second[c] for c in task.classes])))
    return out


def run_task(task: Task, maps_by_class: dict[str, np.ndarray], extract_s_per_image: float, *,
             seeds: list[int], top_k: int, infer_overrides: dict[str, object],
             backbone: str = "vgg16", second: dict[str, np.ndarray] | None = None,
             guard: bool = True, dev_per_class: int = 0, dev_from: str = "even",
             views: tuple[str, ...] = ()) -> dict[str, object]:
    maps = np.concatenate([maps_by_class[c] for c in task.classes])
    truth = [c for c in task.classes for _ in range(len(maps_by_class[c]))]
    n = len(maps)
    timings = {"extract": extract_s_per_image * n}
    start = time.perf_counter()
    prototypes = select_prototypes(maps, np.arange(n), top_k)
    timings["prototypes"] = time.perf_counter() - start
    start = time.perf_counter()
    affinity = affinity_block(maps, prototypes.vectors)
    timings["affinity"] = time.perf_counter() - start
    filter_maps = as_filter_maps(maps, backbone)
    descriptors = task_descriptors(task, maps, second)
    scored_views = view_scores(dict(zip(views, [unit_rows(affinity), *descriptors],
                                        strict=False)), truth, len(task.classes), seeds[0]) \
        if views else {}
    per_seed = []
    timings["infer"] = 0.0
    for seed in seeds:
        config = InferConfig(num_classes=len(task.classes), seed=seed, **infer_overrides)  # type: ignore[arg-type]
        start = time.perf_counter()
        model = create(config)
        if hasattr(model, "guard"):
            model.guard = guard
        if dev_from == "report":
            dev_rows = suggested_dev_set(affinity, descriptors, dev_per_class * len(task.classes),
                                         len(task.classes), seed)
            dev_names = [truth[i] for i in dev_rows]
        else:
            dev_rows = dev_sample(truth, dev_per_class, seed)
            dev_names = [truth[i] for i in dev_rows]
        seeds_ = Seeds.from_names(dev_rows, dev_names, len(task.classes)) if len(dev_rows) \
            else None
        model.fit(affinity, prototypes.image_id, filter_maps=filter_maps,
                  descriptors=descriptors, seeds=seeds_)
        probs = model.posteriors_
        assert probs is not None
        timings["infer"] += (time.perf_counter() - start) / len(seeds)
        if not (np.isfinite(probs).all() and np.isfinite(affinity).all()):
            raise RuntimeError(f"non-finite affinity or probabilities on task {task_id(task)}")
        if seed == seeds[0]:
            again = fit_method(config, affinity, prototypes.image_id, filter_maps=filter_maps,
                               descriptors=descriptors, seeds=seeds_).posteriors_
            if not np.array_equal(again, probs):
                raise RuntimeError(f"the same seed gave different labels on task "
                                   f"{task_id(task)}")
        scores = evaluate(truth, probs.argmax(axis=1), len(task.classes),
                          initial=model.initial_labels_)
        scores.update(calibration(truth, probs))
        scores.update(confidence_quality(truth, probs.argmax(axis=1), label_confidence(model),
                                         len(task.classes)))
        if len(dev_rows):  # named by the dev images, scored on the others (as metrics.json)
            names = name_clusters(dev_names, probs.argmax(axis=1)[dev_rows], len(task.classes))
            dev = dev_set_metrics(dev_rows, dev_names,
                                  [names[k] for k in probs.argmax(axis=1)], truth)
            scores["dev_agreement"], scores["accuracy_others"] = (dev["accuracy"],
                                                                  dev["accuracy_unlabeled"])
        else:
            scores["dev_agreement"] = scores["accuracy_others"] = scores["accuracy"]
        scores["iterations"] = model.n_iter_
        scores["guarded"] = bool(getattr(model, "guarded_", False))
        choice = model.dev_choice_  # graph EM or a classifier of the dev set
        scores["classifier"] = bool(choice and choice["chosen"] == "classifier")
        per_seed.append(scores)

    def mean(key: str) -> float:
        return float(np.mean([s[key] for s in per_seed]))

    # how far the method falls below its own k-means start, in images (worst seed)
    below = max(round((s["accuracy_kmeans"] - s["accuracy"]) * n) for s in per_seed)
    # error detection: per seed, only where there are >= 3 wrong labels to find
    aurocs = [float(s["error_auroc"]) for s in per_seed if int(s["n_wrong"]) >= 3]  # type: ignore[call-overload]
    return {"task": task.name, "classes": task_id(task), "n": n, "m": len(prototypes),
            "accuracy_kmeans": mean("accuracy_kmeans"), "accuracy": mean("accuracy"),
            "ece": mean("ece"), "brier": mean("brier"), "worst_below_start": below,
            "conf_ece": mean("confidence_ece"), "conf_brier": mean("confidence_brier"),
            "conf_floor": mean("confidence_ece_floor"),
            "aurocs": aurocs, "n_wrong": mean("n_wrong"),
            "sel90": float(np.mean([s["selective_accuracy"]["0.9"] for s in per_seed])),  # type: ignore[index]
            "sel80": float(np.mean([s["selective_accuracy"]["0.8"] for s in per_seed])),  # type: ignore[index]
            "guarded": sum(bool(s["guarded"]) for s in per_seed),
            "classifier": sum(bool(s["classifier"]) for s in per_seed),
            "accuracy_others": mean("accuracy_others"), "dev_agreement": mean("dev_agreement"),
            "dev_per_class": dev_per_class,
            "labeled": int(len(dev_rows)),
            "iterations": mean("iterations"), "timings": timings, "probs": probs,
            "views": scored_views}


def suggested_dev_set(affinity: np.ndarray, descriptors: list[np.ndarray], budget: int,
                      num_classes: int, seed: int) -> np.ndarray:
    """The rows a person labels who labels exactly what the tool asks for, round by round
    (``goggles suggest`` / the report's list: :data:`goggles.inference.suggest.PER_CLASS` per
    class a round, the earlier rounds' labels given back), ``budget`` in all; sorted."""
    from goggles.inference.suggest import PER_CLASS, suggest_images

    rows = np.zeros(0, dtype=np.int64)
    while len(rows) < budget:
        ask = min(PER_CLASS * num_classes, budget - len(rows))
        picked = suggest_images(affinity, descriptors, ask, labeled=rows, seed=seed)
        if not len(picked):
            break
        rows = np.union1d(rows, picked)
    return rows


def dev_sample(truth: list[str], per_class: int, seed: int) -> np.ndarray:
    """Rows of ``per_class`` images of each class drawn with ``seed`` (the dev set a person
    would label), sorted; all of a class when it has fewer."""
    rng = np.random.default_rng([seed, 17])
    names = np.asarray(truth)
    picks = [rng.choice(np.flatnonzero(names == c), min(per_class, int((names == c).sum())),
                        replace=False) for c in sorted(set(truth))] if per_class else []
    return np.sort(np.concatenate(picks)).astype(np.int64) if picks else np.zeros(0, np.int64)


def print_table(rows: list[dict[str, object]]) -> None:
    header = (f"{'task':<8} {'classes':<20} {'N':>4} {'M':>5} {'acc_km':>7} {'acc':>7} "
              f"{'below':>5} {'ECE':>6} {'Brier':>6} {'wrong':>5} {'cECE':>6} {'floor':>6} "
              f"{'cBrier':>6} "
              f"{'AUROC':>5} {'sel90':>6} {'sel80':>6} {'guard':>5} "
              f"{'iter':>5} {'extract_s':>9} {'affin_s':>7} {'infer_s':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        t = r["timings"]
        assert isinstance(t, dict)
        print(f"{r['task']:<8} {r['classes']:<20} {r['n']:>4} {r['m']:>5} "
              f"{r['accuracy_kmeans']:>7.4f} {r['accuracy']:>7.4f} "
              f"{r['worst_below_start']:>5} {r['ece']:>6.4f} {r['brier']:>6.4f} "
              f"{r['n_wrong']:>5.1f} {r['conf_ece']:>6.4f} {r['conf_floor']:>6.4f} "
              f"{r['conf_brier']:>6.4f} "
              f"{_auroc(r):>5} {r['sel90']:>6.4f} {r['sel80']:>6.4f} {r['guarded']:>5} "
              f"{r['iterations']:>5.1f} "
              f"{t['extract']:>9.1f} {t['affinity']:>7.2f} {t['infer']:>7.2f}")


def _auroc(row: dict[str, object]) -> str:
    aurocs = row["aurocs"]
    assert isinstance(aurocs, list)
    return f"{np.mean(aurocs):.3f}" if aurocs else "-"


def summarise(rows: list[dict[str, object]], birds: bool = True) -> None:
    groups = {"binary": [r for r in rows if r["task"] == "binary"],
              "pair": [r for r in rows if r["task"] == "pair"],
              "multi": [r for r in rows if str(r["task"]).endswith("-class")],
              "hard": [r for r in rows if r["task"] == "hard"]}
    print()
    for name, group in groups.items():
        if not group:
            continue
        acc = float(np.mean([r["accuracy"] for r in group]))
        km = float(np.mean([r["accuracy_kmeans"] for r in group]))
        ece = float(np.mean([r["ece"] for r in group]))
        brier = float(np.mean([r["brier"] for r in group]))
        below = max(int(r["worst_below_start"]) for r in group)  # type: ignore[call-overload]
        paper = f"  (paper: {PAPER[name]:.4f})" if birds and name in PAPER else ""
        print(f"mean {name:<6} ({len(group):>2} tasks): accuracy {acc:.4f}, "
              f"k-means start {km:.4f}, ECE {ece:.4f}, Brier {brier:.4f}, at most {below} "
              f"image(s) below the start{paper}")
        aurocs = [a for r in group for a in r["aurocs"]]  # type: ignore[attr-defined]
        shown = f"{np.mean(aurocs):.3f} over {len(aurocs)} task-seeds with >= 3 wrong" \
            if aurocs else "- (no task with >= 3 wrong labels)"
        others = float(np.mean([r["accuracy_others"] for r in group]))
        dev = float(np.mean([r["dev_agreement"] for r in group]))
        if any(r["dev_per_class"] for r in group):
            print(f"    with the dev set: accuracy on the other images {others:.4f} (named by "
                  f"the dev set, no oracle mapping), dev-set agreement {dev:.4f}; labels from "
                  f"a classifier of the dev images (it predicted held-out dev labels better) in "
                  f"{sum(int(r['classifier']) for r in group)} fit(s)")  # type: ignore[call-overload]
        print(f"    confidence: ECE {np.mean([r['conf_ece'] for r in group]):.4f} (a calibrated "
              f"confidence with the same values: {np.mean([r['conf_floor'] for r in group]):.4f}), "
              f"Brier "
              f"{np.mean([r['conf_brier'] for r in group]):.4f}, error AUROC {shown}, "
              f"selective accuracy 90% {np.mean([r['sel90'] for r in group]):.4f} / 80% "
              f"{np.mean([r['sel80'] for r in group]):.4f}; guard kept the start in "
              f"{sum(int(r['guarded']) for r in group)} fit(s)")  # type: ignore[call-overload]
    core = groups["binary"] + groups["multi"]
    if core:
        print(f"core tasks (binary + multi-class, {len(core)}): mean ECE "
              f"{np.mean([r['ece'] for r in core]):.4f}, mean accuracy "
              f"{np.mean([r['accuracy'] for r in core]):.4f}")


@dataclass
class MethodRow:
    """One task of the methods table: median accuracy (and range, seconds per fit) by method."""

    task: str
    classes: str
    n: int
    sizes: list[int]
    m: int
    median: dict[str, float]
    spread: dict[str, tuple[float, float]]
    seconds: dict[str, float]
    notes: dict[str, str]


def compare_methods(task: Task, maps_by_class: dict[str, np.ndarray],
                    labeler_maps: dict[str, np.ndarray] | None, labeler: str, *,
                    methods: tuple[str, ...], seeds: list[int], top_k: int,
                    pgm: bool, second: dict[str, np.ndarray] | None = None) -> MethodRow:
    """Accuracy of each method on one task: the median over ``seeds`` for the random ones."""
    from goggles.inference.imagenet import BackboneHeadUnavailable

    maps = np.concatenate([maps_by_class[c] for c in task.classes])
    truth = [c for c in task.classes for _ in range(len(maps_by_class[c]))]
    k = len(task.classes)
    prototypes = select_prototypes(maps, np.arange(len(maps)), top_k)
    affinity = affinity_block(maps, prototypes.vectors)
    scores: dict[str, list[float]] = {m: [] for m in methods}
    seconds: dict[str, float] = {m: 0.0 for m in methods}
    notes: dict[str, str] = {}

    def score(labels: np.ndarray) -> float:
        return float(evaluate(truth, labels, k)["accuracy"])  # type: ignore[arg-type]

    for method in methods:
        if method == "pgm" and not pgm:
            continue
        if method == "backbone":
            if labeler_maps is None:
                notes[method] = "no labeler maps"
                continue
            own = np.concatenate([labeler_maps[c] for c in task.classes])

            def blocks(own: np.ndarray = own) -> Iterator[np.ndarray]:
                yield own

            source = FilterMaps(labeler, blocks)
            start = time.perf_counter()
            try:
                probs = fit_method(InferConfig(num_classes=k, method="backbone"), affinity,
                                   prototypes.image_id, filter_maps=source).posteriors_
            except BackboneHeadUnavailable as error:
                notes[method] = str(error)
                continue
            seconds[method] += time.perf_counter() - start
            scores[method].append(score(probs.argmax(axis=1)))
            continue
        if method == "kmeans" and "em" in methods:
            continue  # read off the em fits: the same seed gives the same k-means start
        descriptors = task_descriptors(task, maps, second) if method == "graph-em" else None
        for seed in seeds:
            config = InferConfig(num_classes=k, method=method, seed=seed)
            start = time.perf_counter()
            model = fit_method(config, affinity, prototypes.image_id, descriptors=descriptors)
            probs = model.posteriors_
            seconds[method] += time.perf_counter() - start
            scores[method].append(score(probs.argmax(axis=1)))
            if method == "em" and "kmeans" in methods:
                scores["kmeans"].append(score(model.initial_labels_))
    if "kmeans" in methods and "em" in methods:  # check the shortcut once per task
        probs = fit_method(InferConfig(num_classes=k, method="kmeans", seed=seeds[0]), affinity,
                           prototypes.image_id).posteriors_
        if score(probs.argmax(axis=1)) != scores["kmeans"][0]:
            raise RuntimeError(f"--method kmeans disagrees with EM's k-means start on "
                               f"{task_id(task)}")
    return MethodRow(
        task=task.name, classes=task_id(task), n=len(maps),
        sizes=[len(maps_by_class[c]) for c in task.classes], m=len(prototypes),
        median={m: float(np.median(v)) for m, v in scores.items() if v},
        spread={m: (float(np.min(v)), float(np.max(v))) for m, v in scores.items() if v},
        seconds={m: seconds[m] / max(1, len(scores[m])) for m in methods if scores[m]},
        notes=notes)


def print_methods_table(title: str, rows: list[MethodRow], columns: tuple[str, ...],
                        paper: dict[str, float]) -> None:
    print(f"\n{title}")
    header = f"{'classes':<20} {'N (per class)':<18}" + "".join(
        f" {METHOD_NAMES[c]:>10}" for c in columns)
    print(header)
    print("-" * len(header))
    for r in rows:
        sizes = f"{r.n}({','.join(str(s) for s in r.sizes)})"
        print(f"{r.classes:<20} {sizes:<18}" + "".join(
            f" {r.median[c]:>10.4f}" if c in r.median else f" {'-':>10}" for c in columns))
    means = {c: [r.median[c] for r in rows if c in r.median] for c in columns}
    print(f"{'average':<39}" + "".join(
        f" {np.mean(v):>10.4f}" if v else f" {'-':>10}" for v in means.values()))
    print(f"{'paper (CUB average)':<39}" + "".join(
        f" {paper[c]:>10.4f}" if c in paper else f" {'':>10}" for c in columns))


def methods_report(rows: list[MethodRow], methods: tuple[str, ...], labeler: str,
                   seeds: list[int]) -> None:
    binary = [r for r in rows if r.task in ("binary", "hard")]
    multi = [r for r in rows if r.task.endswith("-class")]
    cols = tuple(m for m in ALL_METHODS if m in methods)
    print(f"medians over seeds {seeds[0]}..{seeds[-1]} for kmeans, em-random, em and pgm; "
          f"backbone = {labeler}'s ImageNet classifier on its filter maps")
    if binary:
        print_methods_table("Table 1 layout: binary tasks", binary, cols, PAPER_TABLE1)
    if multi:
        print_methods_table("Table 2 layout: multi-class tasks", multi, cols, PAPER_TABLE2)
    for r in rows:
        for method, note in r.notes.items():
            print(f"note ({r.classes}, {method}): {note}")
            break
    if "em" in methods and "kmeans" in methods:
        for name, group in (("binary", binary), ("multi-class", multi), ("all", rows)):
            if not group:
                continue
            diff = np.array([r.median["em"] - r.median["kmeans"] for r in group])
            verdict = "yes" if diff.mean() >= 0 else "no"
            print(f"EM >= k-means on average ({name} tasks): {verdict} (mean difference "
                  f"{diff.mean():+.4f}; EM better on {(diff > 0).sum()}, equal on "
                  f"{(diff == 0).sum()}, worse on {(diff < 0).sum()} of {len(diff)} tasks)")
    timing = {m: float(np.mean([r.seconds[m] for r in rows if m in r.seconds]))
              for m in cols if any(m in r.seconds for r in rows)}
    print("mean seconds per fit: " + ", ".join(f"{METHOD_NAMES[m]} {s:.2f}"
                                                for m, s in timing.items()))


def _labeler(requested: str, backbone: str) -> str:
    if requested != "auto":
        return requested
    from goggles.features.backbones import resolve_weights

    state, _ = resolve_weights(backbone)
    return backbone if any(k.startswith("classifier.") for k in state) else "mobilenet_v2"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="task-drawing and inference seed")
    parser.add_argument("--tasks", default="paper",
                        choices=("paper", "hard", "all", "cifar", "trash"))
    parser.add_argument("--image-size", type=int, default=datasets.DEFAULT_SIZE,
                        help="the networks' input size (the extract stage's is 224)")
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--method", default=default("method"))
    parser.add_argument("--m-step", default="sampled")
    parser.add_argument("--descriptor-backbone", default=default("descriptor_backbone"),
                        help="graph-em's second network (none to skip it)")
    parser.add_argument("--exclude-self", action="store_true",
                        help="leave out each image's affinity to its own prototypes")
    parser.add_argument("--methods", default="",
                        help="'all' or a comma list (em,kmeans,em-random,pgm,backbone): print "
                             "the paper's Tables 1 and 2 layout")
    parser.add_argument("--seeds", type=int, default=0,
                        help="inference seeds per task: with --methods the median over them "
                             "(default 10), else their means and the worst seed's distance "
                             "below the k-means start (default 1)")
    parser.add_argument("--labeler", default="auto",
                        help="with --methods: backbone whose ImageNet head is the backbone "
                             "column (auto, vgg16, mobilenet_v2)")
    parser.add_argument("--pgm-tasks", default="binary", choices=("binary", "all"))
    parser.add_argument("--dev-per-class", type=int, default=0, metavar="N",
                        help="N images per class (drawn per inference seed) are dev labels: "
                             "seeds of inference; accuracy is then also scored on the others")
    parser.add_argument("--dev-from", default="even", choices=("even", "report"),
                        help="report: the images the tool asks for (the report's list, goggles "
                             "suggest), --dev-per-class times K of them in rounds, each "
                             "labeled with its true class; even: --dev-per-class images drawn "
                             "at random within each class")
    parser.add_argument("--no-guard", action="store_true",
                        help="graph-em without its guard (to measure what the guard changes)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    dataset = datasets.DATASETS.get(args.tasks, datasets.CUB)
    tasks = []
    if args.tasks in ("paper", "all"):
        tasks += datasets.draw_tasks(dataset, args.seed)
    if args.tasks in ("hard", "all"):
        tasks += datasets.hard_tasks(dataset)
    if dataset is not datasets.CUB:
        tasks += dataset.tasks(dataset, args.seed)
    needed = sorted({c for t in tasks for c in t.classes})  # only these go through the CNNs
    maps, seconds_per_image = datasets.cached_maps(dataset, args.backbone,
                                                   image_size=args.image_size, classes=needed)
    second = None
    if args.descriptor_backbone not in ("none", args.backbone):
        second = datasets.cached_maps(dataset, args.descriptor_backbone,
                                      image_size=args.image_size, classes=needed)[0]
    views = ("affinity", args.backbone) + ((args.descriptor_backbone,) if second else ()) \
        if dataset is not datasets.CUB else ()
    if args.methods:
        methods = ALL_METHODS if args.methods == "all" else tuple(args.methods.split(","))
        unknown = set(methods) - set(ALL_METHODS)
        if unknown:
            parser.error(f"unknown method(s) {sorted(unknown)}; choose from {ALL_METHODS}")
        labeler = _labeler(args.labeler, args.backbone)
        labeler_maps = None
        if "backbone" in methods:
            labeler_maps = maps if labeler == args.backbone else \
                datasets.cached_maps(dataset, labeler, image_size=args.image_size)[0]
        seeds = list(range(args.seed, args.seed + (args.seeds or 10)))
        table = [compare_methods(t, maps, labeler_maps, labeler, methods=methods, seeds=seeds,
                                 top_k=args.top_k,
                                 pgm=args.pgm_tasks == "all" or len(t.classes) == 2,
                                 second=second)
                 for t in tasks]
        print(f"backbone {args.backbone}, top_k {args.top_k}, task seed {args.seed}")
        methods_report(table, methods, labeler, seeds)
        return 0
    overrides = {"method": args.method, "m_step": args.m_step,
                 "exclude_self": args.exclude_self}
    seeds = list(range(args.seed, args.seed + (args.seeds or 1)))
    rows = [run_task(t, maps, seconds_per_image, seeds=seeds, top_k=args.top_k,
                     infer_overrides=overrides, backbone=args.backbone, second=second,
                     guard=not args.no_guard, dev_per_class=args.dev_per_class,
                     dev_from=args.dev_from, views=views)
            for t in tasks]
    print(f"backbone {args.backbone}, top_k {args.top_k}, task seed {args.seed}, inference "
          f"seeds {seeds[0]}..{seeds[-1]}, {overrides}, descriptor backbone "
          f"{args.descriptor_backbone}")
    print_table(rows)
    summarise(rows, birds=dataset is datasets.CUB)
    if views:
        print_views(rows, views)
    print("every task: finite affinities and probabilities; a second inference with the same "
          "seed gave identical probabilities")
    return 0


if __name__ == "__main__":
    sys.exit(main())
