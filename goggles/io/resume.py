"""Crash-resume for runs on one machine: each stage's outputs are keyed by its inputs and
parameters, and a finished stage leaves a record that a rerun into the same output trusts.

A record (``OUT/artifacts/_stages/<stage>.json``) is written only after every output of the stage
has been committed (each output is itself written atomically), so a stage killed part-way has no
record and is redone, while finished stages — and finished affinity shards one by one — are
reused. The key of a stage hashes its parameters and the keys of the stages it reads, so changing
a parameter redoes that stage and everything downstream of it, and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
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

    def finished(self, name: str, key: str) -> dict[str, Any] | None:
        """The stored result of stage ``name`` if it finished with the same ``key``."""
        uri = self._uri(name)
        if not storage.exists(uri):
            return None
        try:
            record = storage.read_json(uri)
        except (ValueError, OSError):
            return None
        if record.get("key") != key:
            return None
        return record.get("result", {})  # type: ignore[no-any-return]

    def run(self, name: str, key: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Reuse stage ``name`` if it finished with ``key``; else run ``work`` and record it."""
        done = self.finished(name, key)
        if done is not None:
            logger.info("reusing %s from an earlier run (key %s)", name, key[:12])
            return done
        logger.info("running %s", name)
        result = work()
        storage.write_json({"key": key, "result": result, "finished_at": time.time()},
                           self._uri(name))
        return result
