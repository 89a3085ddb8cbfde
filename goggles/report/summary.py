"""The report's summary table: what the run did and, with ground truth, how well; the end
model's held-out scores when the run trained one (``metrics.json``'s ``end_model``)."""

from __future__ import annotations

from typing import Any

END_MODEL_SCORES = (
    ("accuracy", "end model: accuracy on the held-out third"),
    ("hard_label_accuracy", "… the same head trained on the arg-max labels"),
    ("supervised_accuracy", "… trained on the true classes (the bound)"),
    ("ratio_to_supervised", "end model / supervised bound"),
    ("agreement", "end model agrees with the labels (held-out)"),
)


SCORED = {"graph-em": "graph EM", "classifier": "classifier", "unlabeled": "without labels"}
"""How the summary names each way of using the dev labels."""


def end_model_rows(end_model: dict[str, Any]) -> list[tuple[str, Any]]:
    """Rows for the end model (``goggles run --train`` / ``goggles train``): its head and the
    scores that exist (accuracy and the bounds need ground truth; agreement does not)."""
    if not end_model:
        return []
    rows: list[tuple[str, Any]] = [("end model", f"{end_model.get('head', '?')} head on the "
                                                 f"labels, {end_model.get('n_images', '?')} "
                                                 "images (OUT/model)")]
    rows += [(label, f"{float(end_model[key]):.4f}") for key, label in END_MODEL_SCORES
             if key in end_model]
    return rows


def summary_rows(metrics: dict[str, Any], state: dict[str, Any]) -> list[tuple[str, Any]]:
    """(label, value) rows of the report's summary table, from ``metrics.json`` and the
    inference state."""
    rows: list[tuple[str, Any]] = [
        (label, metrics[key]) for key, label in (
            ("n_images", "images labeled"), ("n_rejected", "files rejected"),
            ("num_classes", "classes (K)"), ("num_prototypes", "prototypes (columns of A)"),
            ("method", "method"), ("backbone", "backbone"), ("seed", "seed"),
            ("em_iterations", "EM iterations"), ("converged", "converged"))
        if key in metrics]
    if "accuracy" in metrics:
        rows.append(("accuracy (best cluster→class mapping)", f"{metrics['accuracy']:.4f}"))
    if "accuracy_kmeans" in metrics:
        rows.append(("accuracy of the k-means start", f"{metrics['accuracy_kmeans']:.4f}"))
    dev = metrics.get("dev_set")
    if dev:
        rows.append((f"dev set ({dev['n_images']} images): named labels agree",
                     f"{dev['accuracy']:.4f}"))
        if "accuracy_unlabeled" in dev:
            rows.append((f"the other {dev['n_unlabeled']} images: named label = truth",
                         f"{dev['accuracy_unlabeled']:.4f}"))
        if dev.get("warning"):
            rows.append(("dev set names", dev["warning"]))
        chosen = dev.get("labels_from")
        if chosen:
            brier = chosen["held_out_brier"]
            source = {"classifier": "a classifier of the dev images",
                      "unlabeled": "the fit without labels, named by the dev images"}.get(
                chosen["chosen"], "graph EM seeded by the dev images")
            scores = ", ".join(f"{SCORED.get(k, k)} {v:.3f}" for k, v in brier.items())
            rows.append(("labels from (predicts held-out dev labels best)",
                         f"{source} (Brier per image, {chosen['folds']} folds: {scores})"))
    rows += end_model_rows(metrics.get("end_model") or {})
    timings = metrics.get("timings_s") or {}
    if timings:
        stages = ["ingest", "extract", "affinity", "infer", "train", "evaluate"]
        ordered = [k for k in stages if k in timings] + [k for k in timings if k not in stages]
        rows.append(("seconds per stage", ", ".join(f"{k} {float(timings[k]):.1f}"
                                                      for k in ordered)))
    if state.get("initial_labels") is None and state.get("method") in ("pgm", "backbone"):
        rows.append(("note", f"method {state['method']} has no k-means start or EM trace"))
    return rows
