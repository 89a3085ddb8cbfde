"""What ``goggles suggest OUT --budget B --output FILE`` does: the images of a finished run a
person should label next (:mod:`goggles.inference.suggest`), as a CSV with a ``uri`` column and
an empty ``label`` column to fill in, then given back to a rerun with ``--dev-labels``.

The images labeled before are never asked for again: the run's own dev labels
(``inference.json``) and those of any ``--dev-labels`` file of earlier rounds (CSV, Parquet or a
Label Studio export).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from goggles.config import ConfigError
from goggles.io import artifacts, features_folder, storage, uris
from goggles.io.artifacts import output_paths
from goggles.io.dev_labels import read_dev_labels

logger = logging.getLogger(__name__)

__all__ = ["suggest_for_run"]


def suggest_for_run(run_uri: str, budget: int, output_uri: str, *,
                    dev_labels_uris: Sequence[str] = (), seed: int | None = None
                    ) -> dict[str, Any]:
    """Write the ``budget`` images of the run in ``run_uri`` to label next to ``output_uri`` (a
    CSV ``uri,label`` with empty labels); returns ``{"suggested", "labeled_before", "output"}``.
    """
    from goggles.inference.suggest import suggest_images
    from goggles.training.labeler import shard_uris

    reason = uris.refusal(run_uri) or uris.refusal(output_uri)
    if reason is not None:
        raise ConfigError(reason, "output_uri")
    if budget < 1:
        raise ConfigError(f"--budget must be at least 1 image, got {budget}", "budget")
    paths = output_paths(run_uri)
    missing = [name for name in ("manifest", "inference") if not storage.exists(paths[name])]
    if missing or not storage.exists(storage.join(paths["features"], "meta.json")):
        raise ConfigError(f"{uris.redact(run_uri)} is not a finished goggles run (no "
                          f"{', '.join(missing) or 'artifacts/features'}); give the --output "
                          "of a `goggles run`", "output_uri")
    if storage.exists(output_uri):
        raise ConfigError(f"{uris.redact(output_uri)} exists; give a new file for the images "
                          "to label (it is never overwritten)", "output_uri")
    rows = artifacts.accepted(storage.read_parquet(paths["manifest"]))
    state = storage.read_json(paths["inference"])
    labeled = set((state.get("dev") or {}).get("rows", []))
    for dev_uri in dev_labels_uris:
        labeled |= set(read_dev_labels(dev_uri, rows)[0].tolist())
    descriptors = features_folder.stored_descriptors(paths["features"]) or []
    affinity = artifacts.StoredShards(shard_uris(paths["affinity"]))
    if affinity.shape[0] != rows.num_rows:
        raise ConfigError(f"the run's affinity has {affinity.shape[0]} rows for "
                          f"{rows.num_rows} images; rerun it", "output_uri")
    run_seed = artifacts.run_seed(run_uri) if seed is None else seed
    picks = suggest_images(affinity, descriptors, budget, labeled=sorted(labeled),
                           seed=run_seed)
    image_uris = rows["uri"].to_pylist()
    table = pa.table({"uri": [image_uris[i] for i in picks], "label": [""] * len(picks)})
    buffer = io.BytesIO()
    pacsv.write_csv(table, buffer)
    storage.write_bytes(output_uri, buffer.getvalue())
    logger.info("%d image(s) to label written to %s", len(picks), uris.redact(output_uri))
    return {"suggested": int(len(picks)), "labeled_before": len(labeled),
            "output": output_uri}
