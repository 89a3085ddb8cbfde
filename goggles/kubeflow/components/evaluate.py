"""The evaluate/report component: metrics.json, report.html and the Kubeflow UI outputs."""

from kfp import dsl
from kfp.dsl import (
    HTML,
    Artifact,
    ClassificationMetrics,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Output,
)

from goggles.kubeflow.components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate(manifest: Input[Dataset], prototypes: Input[Dataset],
             affinity_sample: Input[list[Dataset]], labels: Input[Dataset],
             inference: Input[Artifact], source_uri: str, backbone: str, top_k: int,
             num_shards: int, seed: int, end_model: dict, metrics_json: Output[Artifact],
             report: Output[HTML],
             metrics: Output[Metrics], confusion: Output[ClassificationMetrics],
             summary: Output[Markdown]) -> None:
    """Metrics and the report (:func:`goggles.pipeline.wiring.evaluate_and_report`, as the
    in-process runner writes them), plus what the Kubeflow UI shows.

    Parameters
    ----------
    manifest, prototypes, labels, inference : upstream outputs; their metadata carry each
        stage's ``seconds`` (collected as ``timings_s``).
    affinity_sample : each affinity shard's rows in the report's view (at most 2,000 rows of A
        in all, :data:`goggles.pipeline.fanout.REPORT_ROWS`): the report's affinity matrix is
        drawn from them, so this task never reads all of A.
    source_uri, backbone, top_k, num_shards, seed : recorded in ``metrics.json``.
    end_model : the train branch's held-out scores (``{}`` when the run trains no model).
    metrics_json : the run's ``metrics.json``.
    report : the self-contained ``report.html``.
    metrics : scalar metrics for the run page (n_images, n_rejected, num_prototypes,
        em_iterations, features_computed, features_reused, accuracy ... when ground truth
        exists).
    confusion : confusion matrix (truth x predicted, after the best cluster→class mapping),
        logged only when ground truth exists.
    summary : a Markdown table of the same figures.
    """
    from goggles.io import storage
    from goggles.pipeline.wiring import evaluate_and_report, run_record

    record = run_record({"backbone": backbone, "seed": seed, "top_k": top_k,
                         "num_shards": num_shards, "source_uri": source_uri}, runner="kfp",
                        weights_source=prototypes.metadata.get("weights_source", ""),
                        num_prototypes=int(prototypes.metadata["num_prototypes"]),
                        extracted=prototypes.metadata)
    timings = {
        "ingest": float(manifest.metadata.get("seconds", 0.0)),
        "extract": float(prototypes.metadata.get("seconds", 0.0)),
        "affinity": round(sum(float(s.metadata.get("seconds", 0.0)) for s in affinity_sample), 3),
        "infer": float(labels.metadata.get("seconds", 0.0)),
    }
    result = evaluate_and_report(
        manifest_uri=manifest.path, labels_uri=labels.path, inference_uri=inference.path,
        prototypes_uri=prototypes.path, affinity_uris=[part.path for part in affinity_sample],
        affinity_sample=True,
        metrics_uri=metrics_json.path, report_uri=report.path, record=record, timings=timings,
        end_model=end_model or None)
    metrics_json.metadata.update({"format": "json", "n_images": result["n_images"]})

    scalars = {"n_images": result["n_images"], "n_rejected": result["n_rejected"],
               "num_classes": result["num_classes"], "num_prototypes": result["num_prototypes"],
               "em_iterations": result["em_iterations"], "converged": int(result["converged"])}
    for key in ("features_computed", "features_reused"):
        if key in result:
            scalars[key] = int(result[key])
    for key in ("accuracy", "accuracy_kmeans"):
        if key in result:
            scalars[key] = round(float(result[key]), 6)
    if "dev_set" in result:
        scalars["dev_set_accuracy"] = round(float(result["dev_set"]["accuracy"]), 6)
    for name, value in scalars.items():
        metrics.log_metric(name, value)
    if "confusion" in result:
        confusion.log_confusion_matrix(result["confusion"]["labels"],
                                       result["confusion"]["matrix"])

    lines = ["# goggles run", "", "| metric | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in scalars.items()]
    lines += [f"| {stage} (s) | {seconds} |" for stage, seconds in result["timings_s"].items()]
    if "per_class_recall" in result:
        lines += ["", "| class | recall |", "|---|---|"]
        lines += [f"| {name} | {recall:.4f} |"
                  for name, recall in result["per_class_recall"].items()]
    dev = result.get("dev_set")
    if dev:  # scored apart from the unlabeled images (goggles.report.evaluation.dev_set_metrics)
        lines += ["", "| dev set | value |", "|---|---|", f"| images | {dev['n_images']} |",
                  f"| named labels agree | {dev['accuracy']:.4f} |"]
        if "accuracy_unlabeled" in dev:
            lines += [f"| other images: named label = truth | {dev['accuracy_unlabeled']:.4f} |"]
        if dev.get("warning"):
            lines += [f"| names | {dev['warning']} |"]
    if result.get("warnings"):
        lines += ["", "**Warnings**", ""] + [f"- {warning}" for warning in result["warnings"]]
    storage.write_text("\n".join(lines) + "\n", summary.path)
