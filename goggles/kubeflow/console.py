"""The console of a run with kfp's local runners: kfp's own log and every task's output, shown
with ``goggles -v``, else boiled down to the run's console lines (:mod:`goggles.pipeline.console`).
"""

from __future__ import annotations

import ast
import io
import re
import sys
import time
from typing import Any

from goggles.io.progress import LINE
from goggles.pipeline import console

ANSI = re.compile(r"\x1b\[[0-9;]*m")
"""A terminal colour code (kfp colours task names and statuses)."""

TASK_STAGES = {"list-source": "ingest", "ingest-part": "ingest", "join-manifest": "ingest",
               "extract-part": "extract",
               "gather-features": "extract", "affinity-shard": "affinity", "infer-fit": "infer",
               "label-shard": "infer", "gather-labels": "infer", "train": "train",
               "evaluate": "evaluate"}
"""The stage the console names for each task of the pipeline (the others are not named)."""
_EXECUTING = re.compile(r"Executing task '(?P<task>[^']+)'")
_OUTPUTS = re.compile(r"Task '(?P<task>[^']+)' outputs:")
_PIPELINE_DONE = re.compile(r"Pipeline '[^']+' finished with status")
_METADATA = re.compile(r"metadata=(?P<dict>\{.*\})\s*\)?\s*$")
_SUMMED = ("features_computed", "features_reused", "rows")


class TaskConsole(io.TextIOBase):
    """Where kfp's local runner writes (its own log and every task's output) during a run.

    With ``verbose``, all of it goes on to ``stream`` (colour codes removed unless that is a
    terminal). Otherwise it is kept in :attr:`lines` (the log to show when a task fails) and only
    the console lines go on (:mod:`goggles.pipeline.console`): one as each stage's first task
    starts, one as the stage ends with the counts its tasks' outputs hold, and the tasks'
    progress lines (:data:`goggles.io.progress.LINE`; on a terminal one line that updates in
    place).
    """

    def __init__(self, *, verbose: bool, stream: Any = None):
        self.verbose = verbose
        self.stream = stream if stream is not None else sys.stderr
        self.colour = bool(getattr(self.stream, "isatty", lambda: False)())
        self.lines: list[str] = []
        self._partial = ""
        self._stage: str | None = None
        self._started = 0.0
        self._tasks: dict[str, dict[str, Any]] = {}  # the stage's tasks' metadata, by name
        self._block: dict[str, Any] = {}  # the metadata of the outputs being read
        self._outputs_of: str | None = None
        self._seen: dict[str, Any] = {}  # every task's metadata so far (later ones win)
        self._progress_shown = False  # a progress line is on the terminal, to be cleared

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self.verbose:
            self.stream.write(text if self.colour else ANSI.sub("", text))
            return len(text)
        self._partial += text
        *complete, self._partial = self._partial.split("\n")
        for line in complete:
            self._line(ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def _line(self, line: str) -> None:
        self.lines.append(line)
        if self._progress_shown and not LINE.match(line.strip()):
            self.stream.write("\r\x1b[K")
            self._progress_shown = False
        executing = _EXECUTING.search(line)
        if executing:
            self._end_outputs()
            stage = TASK_STAGES.get(executing["task"])
            if stage is not None and stage != self._stage:
                self.finish()
                self._stage, self._started, self._tasks = stage, time.perf_counter(), {}
                console.started(stage)
            return
        outputs = _OUTPUTS.search(line)
        if outputs:
            self._end_outputs()
            self._outputs_of = outputs["task"]
            return
        if _PIPELINE_DONE.search(line):
            self.finish()
            return
        metadata = _METADATA.search(line)
        if metadata and self._outputs_of is not None:
            self._merge(metadata["dict"])
            return
        if LINE.match(line.strip()):
            if self.colour:  # a terminal: one line that updates in place, like a bar
                self.stream.write("\r" + line.strip() + "\x1b[K")
                self.stream.flush()
                self._progress_shown = True
            else:
                console.say(line.strip())

    def _merge(self, text: str) -> None:
        try:
            found = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return
        if not isinstance(found, dict):
            return
        if "start" in found and "stop" in found:
            found = {**found, "rows": int(found["stop"]) - int(found["start"])}
        for key, value in found.items():  # one task's artifacts: the first says it
            self._block.setdefault(key, value)

    def _end_outputs(self) -> None:
        """Fold the outputs just read into their task's: the counts of a task that ran more
        than once (one per part or shard) are summed."""
        task, block = self._outputs_of, self._block
        self._outputs_of, self._block = None, {}
        if task is None or not block:
            return
        self._seen.update(block)
        if TASK_STAGES.get(task) != self._stage:
            return
        earlier = self._tasks.setdefault(task, {})
        for key, value in block.items():
            if key in _SUMMED and isinstance(value, (int, float)) and key in earlier:
                earlier[key] += value
            else:
                earlier.setdefault(key, value)

    def finish(self) -> None:
        """End the stage that is running (its console line): the counts of its tasks, a later
        task's (the gather's total) over an earlier one's."""
        self._end_outputs()
        if self._stage is not None:
            counts: dict[str, Any] = {}
            for found in self._tasks.values():
                counts.update(found)
            counts.setdefault("num_prototypes", self._seen.get("num_prototypes"))
            console.finished(self._stage, time.perf_counter() - self._started, counts)
        self._stage = None
