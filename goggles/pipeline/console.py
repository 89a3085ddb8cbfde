"""What a run says on the console: one line as each stage starts and one as it ends (its counts
and seconds), the progress lines of the long stages in between
(:mod:`goggles.io.progress`), and nothing else unless asked (``goggles -v``).

Every runner writes these lines to the ``goggles.console`` logger (:data:`console`), which the
command line prints bare on standard error; the in-process runner from its stage results, the
Kubeflow runners from the tasks' outputs (:mod:`goggles.kubeflow.runner`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

console = logging.getLogger("goggles.console")
"""The run's console lines (the command line prints them without a prefix)."""

STAGES = ("ingest", "extract", "affinity", "infer", "train", "evaluate")
"""The stages the console names, in run order."""

_WIDTH = max(len(stage) for stage in STAGES) + 1


def say(line: str) -> None:
    """One console line as it is (a task's progress line)."""
    console.info("%s", line)


def started(stage: str) -> None:
    """``extract   started``."""
    console.info("%s started", stage.ljust(_WIDTH))


def finished(stage: str, seconds: float, result: Mapping[str, Any] | None = None, *,
             reused: bool = False) -> None:
    """``ingest    done in 1.7 s: 80 images accepted, 0 rejected`` (``reused from the earlier
    run`` when nothing was redone)."""
    detail = describe(stage, result or {})
    how = "reused from the earlier run" if reused else f"done in {seconds:.1f} s"
    console.info("%s %s%s", stage.ljust(_WIDTH), how, f": {detail}" if detail else "")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def describe(stage: str, result: Mapping[str, Any]) -> str:
    """The counts of a stage's ``result`` (its return value, or its task outputs' metadata
    merged) in a few words; empty when it holds none."""
    def number(key: str) -> int | None:
        value = result.get(key)
        return int(value) if isinstance(value, (int, float)) else None

    words: list[str] = []
    if stage == "ingest" and number("n_images") is not None:
        words.append(f"{_plural(number('n_images') or 0, 'image')} accepted, "
                     f"{number('n_rejected') or 0} rejected")
    elif stage == "extract":
        computed, reused = number("features_computed"), number("features_reused")
        if computed is not None:
            words.append(f"features of {computed} images computed, {reused or 0} reused")
        if number("num_prototypes") is not None:
            words.append(_plural(number("num_prototypes") or 0, "prototype"))
    elif stage == "affinity" and number("rows") is not None:
        words.append(f"{_plural(number('rows') or 0, 'image')} × "
                     f"{_plural(number('num_prototypes') or 0, 'prototype')}")
    elif stage == "infer":
        if number("num_classes") is not None:
            classes = number("num_classes") or 0
            words.append(f"{classes} class{'' if classes == 1 else 'es'}")
        if number("em_iterations") is not None:
            words.append(_plural(number("em_iterations") or 0, "EM iteration"))
    elif stage == "evaluate" and isinstance(result.get("accuracy"), (int, float)):
        words.append(f"accuracy {float(result['accuracy']):.3f}")
    return ", ".join(words)


def closing_lines(output_uri: str, metrics: dict[str, Any]) -> list[str]:
    """The three lines a run ends with: how right the labels are (the accuracy when folders
    gave the truth, else the confidence's estimate), where the labels and the report are, and
    the next command."""
    out = output_uri.rstrip("/")
    n = int(metrics.get("n_images", 0))
    if isinstance(metrics.get("accuracy"), (int, float)):
        quality = (f"accuracy {metrics['accuracy']:.3f} on {n} images (folder names as the "
                   "truth, clusters matched to them)")
    elif isinstance(metrics.get("estimated_accuracy"), (int, float)):
        estimate = float(metrics["estimated_accuracy"])
        quality = (f"estimated accuracy {estimate:.3f}: about {round(estimate * n)} of {n} "
                   "labels are probably right (their mean confidence; no ground truth)")
    else:
        quality = f"{n} images labeled"
    named = (metrics.get("dev_set") or {}).get("n_images")
    rename = "" if named else " --names cluster_0=NAME,cluster_1=NAME"
    return [quality,
            f"labels: {out}/labels.parquet   report: {out}/report.html",
            f"next: open the report, then goggles export {out} --format imagefolder "
            f"--output DEST{rename}"]
