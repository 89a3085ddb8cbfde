"""Labeling new images with a trained run, against a full rerun over all of them (cub-dev).

    python benchmarks/apply.py [--tasks pairs|paper|all] [--seed 0]

Each task's images are split per species, seeded: 2/3 are the run's ("fit"), 1/3 arrive later
("new"). The run is made with the library's own functions from the cached filter maps (VGG-16
prototypes and A, VGG-16 and MobileNetV2 descriptors, graph EM) and trains its end model on
its labels (:func:`goggles.training.train.train_end_model`); the new images are then labeled
without refitting, by

* the end model on their descriptors (``end-model``), and
* the fitted affinity labeler (:class:`goggles.training.labeler.AffinityLabeler`): their rows
  of A against the run's prototypes, then the mean posterior of their 10 nearest fitted images
  (``affinity``);

and by a full rerun of the whole pipeline over fit + new images (``rerun``). Accuracy is on
the new images only, against the truth after the evaluation's Hungarian matching.

Speed: images/s of each apply against the full rerun, end to end on this CPU: the CNN passes
(VGG-16 + MobileNetV2) at the seconds per image measured when the cache was filled, plus every
step measured here (descriptors, prototypes, A, graph EM, the head / the labeler). ``no CNN``
gives the same without the CNN passes, which both sides pay per image.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cub import Task, cached_maps, draw_tasks, hard_tasks, task_id  # noqa: E402
from goggles.features.affinity import affinity_block  # noqa: E402
from goggles.features.descriptors import bilinear_descriptors  # noqa: E402
from goggles.features.prototypes import select_prototypes  # noqa: E402
from goggles.inference.config import InferConfig  # noqa: E402
from goggles.inference.registry import fit_method  # noqa: E402
from goggles.report.evaluation import evaluate  # noqa: E402
from goggles.training.config import TrainConfig  # noqa: E402
from goggles.training.head import predict_proba  # noqa: E402
from goggles.training.labeler import AffinityLabeler  # noqa: E402
from goggles.training.train import train_end_model  # noqa: E402

TARGET, CLOSE = 0.97, 0.01


def split(sizes: list[int], seed: int) -> np.ndarray:
    """A boolean mask of the new images: a seeded third of each species."""
    rng = np.random.default_rng(seed)
    new = []
    for size in sizes:
        mask = np.zeros(size, dtype=bool)
        mask[rng.permutation(size)[:round(size / 3)]] = True
        new.append(mask)
    return np.concatenate(new)


def timed(seconds: dict[str, float], name: str, work):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = work()
    seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
    return result


def fit_run(maps: np.ndarray, second: np.ndarray, k: int, seed: int,
            seconds: dict[str, float]) -> tuple[object, np.ndarray, list[np.ndarray], np.ndarray]:
    """What a run does after the CNN passes: descriptors, prototypes, A, graph EM."""
    descriptors = timed(seconds, "describe", lambda: [bilinear_descriptors(maps),
                                                      bilinear_descriptors(second)])
    prototypes = timed(seconds, "prototypes",
                       lambda: select_prototypes(maps, np.arange(len(maps)), 5))
    affinity = timed(seconds, "affinity", lambda: affinity_block(maps, prototypes.vectors))
    model = timed(seconds, "infer", lambda: fit_method(
        InferConfig(num_classes=k, seed=seed), affinity, prototypes.image_id,
        descriptors=descriptors))
    return prototypes, affinity, descriptors, model.posteriors_


def run_task(task: Task, vgg: dict[str, np.ndarray], mob: dict[str, np.ndarray],
             cnn_s: float, seed: int) -> dict[str, object]:
    k = len(task.classes)
    maps = np.concatenate([vgg[c] for c in task.classes])
    second = np.concatenate([mob[c] for c in task.classes])
    truth = np.asarray([c for c in task.classes for _ in range(len(vgg[c]))])
    new = split([len(vgg[c]) for c in task.classes], seed)
    fit = ~new

    def accuracy(probs: np.ndarray) -> float:
        return float(evaluate(list(truth[new]), probs.argmax(axis=1), k)["accuracy"])  # type: ignore[arg-type]

    # the run on the fit images, and its end model
    run_s: dict[str, float] = {}
    prototypes, affinity, descriptors, posteriors = fit_run(maps[fit], second[fit], k, seed,
                                                            run_s)
    head, _ = timed(run_s, "train", lambda: train_end_model(descriptors, posteriors, None,
                                                            TrainConfig(seed=seed)))
    labeler = timed(run_s, "labeler", lambda: AffinityLabeler.from_fit(
        method="graph-em", classes=[f"cluster_{i}" for i in range(k)],
        prototypes=prototypes.vectors, source_index=prototypes.image_id, affinity=affinity,
        posteriors=posteriors, descriptors=descriptors,
        networks=[("vgg16", ""), ("mobilenet_v2", "")], seed=seed))
    # applying both to the new images (after the CNN passes)
    end_s: dict[str, float] = {}
    new_descriptors = timed(end_s, "describe", lambda: [bilinear_descriptors(maps[new]),
                                                        bilinear_descriptors(second[new])])
    end_probs = timed(end_s, "predict", lambda: predict_proba(
        head, np.concatenate(new_descriptors, axis=1)))
    aff_s: dict[str, float] = {"describe": end_s["describe"]}
    rows = timed(aff_s, "affinity", lambda: affinity_block(maps[new], labeler.prototypes))
    aff_probs = timed(aff_s, "predict", lambda: labeler.predict_proba(rows, new_descriptors))
    # a full rerun over every image
    rerun_s: dict[str, float] = {}
    *_, rerun_probs = fit_run(maps, second, k, seed, rerun_s)
    n_new, n_all = int(new.sum()), len(maps)
    return {
        "task": task.name, "classes": task_id(task), "n_fit": int(fit.sum()), "n_new": n_new,
        "end-model": accuracy(end_probs), "affinity": accuracy(aff_probs),
        "rerun": float(evaluate(list(truth), rerun_probs.argmax(axis=1), k)["accuracy"]),  # type: ignore[arg-type]
        "rerun_new": accuracy(rerun_probs[new]),
        "agree": float((end_probs.argmax(axis=1) == aff_probs.argmax(axis=1)).mean()),
        "seconds": {"end-model": sum(end_s.values()), "affinity": sum(aff_s.values()),
                    "rerun": sum(rerun_s.values()), "train": run_s["train"],
                    "labeler": run_s["labeler"]},
        "cnn": {"apply": cnn_s * n_new, "rerun": cnn_s * n_all}, "n_all": n_all}


def print_table(rows: list[dict[str, object]]) -> None:
    header = (f"{'task':<8} {'classes':<20} {'fit':>4} {'new':>4} {'end-model':>9} "
              f"{'affinity':>8} {'rerun':>7} {'agree':>6} {'img/s end':>9} {'img/s aff':>9} "
              f"{'img/s rerun':>11}")
    print(header)
    print("-" * len(header))
    for r in rows:
        s, c = r["seconds"], r["cnn"]
        assert isinstance(s, dict) and isinstance(c, dict)
        print(f"{r['task']:<8} {r['classes']:<20} {r['n_fit']:>4} {r['n_new']:>4} "
              f"{r['end-model']:>9.4f} {r['affinity']:>8.4f} {r['rerun_new']:>7.4f} "
              f"{r['agree']:>6.3f} {r['n_new'] / (s['end-model'] + c['apply']):>9.2f} "
              f"{r['n_new'] / (s['affinity'] + c['apply']):>9.2f} "
              f"{r['n_all'] / (s['rerun'] + c['rerun']):>11.2f}")


def summarise(rows: list[dict[str, object]], cnn_s: float) -> None:
    groups = {"pairs": [r for r in rows if r["task"] == "binary"],
              "multi-class": [r for r in rows if str(r["task"]).endswith("-class")],
              "same-family": [r for r in rows if r["task"] == "hard"]}
    print()
    for name, group in groups.items():
        if not group:
            continue

        def mean(key: str, group: list[dict[str, object]] = group) -> float:
            return float(np.mean([float(r[key]) for r in group]))  # type: ignore[arg-type]

        def total(side: str, group: list[dict[str, object]] = group) -> float:
            return float(sum(r["seconds"][side] for r in group))  # type: ignore[index]

        new = sum(int(r["n_new"]) for r in group)  # type: ignore[call-overload]
        every = sum(int(r["n_all"]) for r in group)  # type: ignore[call-overload]
        rerun = mean("rerun_new")
        print(f"{name} ({len(group)} tasks, {new} new images): accuracy on the new images "
              f"end model {mean('end-model'):.4f}, affinity labeler {mean('affinity'):.4f}, "
              f"full rerun {rerun:.4f} (over all its images {mean('rerun'):.4f})")
        for labeler in ("end-model", "affinity"):
            acc = mean(labeler)
            ok = acc >= TARGET and abs(acc - rerun) <= CLOSE
            print(f"  {labeler:<9}: >= {TARGET} and within {CLOSE} of the rerun: "
                  f"{'met' if ok else 'NOT met'} ({acc:.4f} vs {rerun:.4f})")
        print(f"  images/s with the CNN passes ({cnn_s:.3f} s/image): end model "
              f"{new / (total('end-model') + cnn_s * new):.2f}, affinity labeler "
              f"{new / (total('affinity') + cnn_s * new):.2f}, full rerun "
              f"{every / (total('rerun') + cnn_s * every):.2f}")
        apply_s = total('end-model') + cnn_s * new
        rerun_s = total('rerun') + cnn_s * every
        print(f"  wall time for the new images: apply {apply_s:.1f} s (end model), full rerun "
              f"over all {every} images {rerun_s:.1f} s: apply {rerun_s / apply_s:.1f}x faster")
        print(f"  images/s after the CNN passes: end model {new / total('end-model'):.1f}, "
              f"affinity labeler {new / total('affinity'):.1f}, full rerun "
              f"{every / total('rerun'):.1f}; once per run: training the end model "
              f"{total('train') / len(group):.2f} s, loading the affinity labeler "
              f"{total('labeler') / len(group):.3f} s per task")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="pairs", choices=("pairs", "paper", "all"))
    parser.add_argument("--seed", type=int, default=0, help="task draw, split and fit seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    vgg, vgg_s = cached_maps("vgg16")
    mob, mob_s = cached_maps("mobilenet_v2")
    tasks = [t for t in draw_tasks(args.seed) if args.tasks != "pairs" or t.name == "binary"]
    if args.tasks == "all":
        tasks += hard_tasks()
    rows = [run_task(task, vgg, mob, vgg_s + mob_s, args.seed) for task in tasks]
    print(f"split 2/3 fit, 1/3 new per species (seed {args.seed}); graph EM on VGG-16 A + "
          "VGG-16 and MobileNetV2 descriptors; CNN passes at the cache's measured "
          f"{vgg_s:.3f} + {mob_s:.3f} s/image")
    print_table(rows)
    summarise(rows, vgg_s + mob_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
