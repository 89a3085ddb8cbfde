"""Crash-resume for runs on one machine: each stage's outputs are keyed by its inputs and
parameters, and a finished stage leaves a record that a rerun into the same output trusts.

A record (``OUT/artifacts/_stages/<stage>.json``) is written only after every output of the stage
has been committed (each output is itself written atomically), so a stage killed part-way has no
record and is redone, while finished stages — and finished affinity shards one by one — are
reused. The key of a stage hashes its parameters, the content of what it reads from outside
(the source's listing with each file's size and version, the digest of dev labels and weights)
and the keys of the stages it reads, so changing any of them redoes that stage and everything
downstream of it, and nothing else. A record is trusted only while the outputs it names exist:
a deleted output, or a record that cannot be read, redoes its stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from goggles.io import storage

logger = logging.getLogger(__name__)


def stage_key(*parts: Any) -> str:
    """A digest of JSON-serialisable parts (parameters, upstream keys, listings)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class StageRecords:
    """Records of finished stages under ``root_uri/_stages``."""

    def __init__(self, root_uri: str):
        self.root = storage.join(root_uri, "_stages")

    def _uri(self, name: str) -> str:
        return storage.join(self.root, f"{name}.json")

    def finished(self, name: str, key: str,
                 outputs: Sequence[str] = ()) -> dict[str, Any] | None:
        """The stored result of stage ``name`` if it finished with the same ``key`` and every
        one of its ``outputs`` still exists; else ``None`` (the stage is to be redone)."""
        uri = self._uri(name)
        if not storage.exists(uri):
            return None
        try:
            record = storage.read_json(uri)
        except (ValueError, OSError):
            logger.warning("the record of %s cannot be read; redoing it", name)
            return None
        if not isinstance(record, dict) or record.get("key") != key:
            return None
        missing = [output for output in outputs if not storage.exists(output)]
        if missing:
            logger.info("redoing %s: its output %s is missing", name,
                        storage.redact(missing[0]))
            return None
        result = record.get("result", {})
        return result if isinstance(result, dict) else None

    def run(self, name: str, key: str, work: Callable[[], dict[str, Any]],
            outputs: Sequence[str] = ()) -> dict[str, Any]:
        """Reuse stage ``name`` if it finished with ``key`` and its ``outputs`` exist; else run
        ``work`` and record it."""
        done = self.finished(name, key, outputs)
        if done is not None:
            logger.info("reusing %s from an earlier run (key %s)", name, key[:12])
            return done
        logger.info("running %s", name)
        result = work()
        storage.write_json({"key": key, "result": result, "finished_at": time.time(),
                            "outputs": list(outputs)}, self._uri(name))
        return result

    def record(self, name: str, key: str, result: dict[str, Any],
               outputs: Sequence[str] = ()) -> None:
        """Record stage ``name`` as finished with ``key`` and ``result`` by other means (a
        Kubeflow runner's task), so that :meth:`run` reuses it."""
        storage.write_json({"key": key, "result": result, "finished_at": time.time(),
                            "outputs": list(outputs)}, self._uri(name))
