"""The local runners' scratch folder (kfp's ``pipeline_root`` when the user names none) and
their task processes: neither outlives a run, even one killed with SIGKILL.

* Each scratch folder records its owner (:class:`goggles.io.lock.Holder`: host, pid, process
  start, boot); a run removes, when it starts, the scratch folders of owners that this machine
  can see are gone (a killed run cannot clean up after itself).
* The task processes kfp's local runner starts get ``$GOGGLES_TASK_PARENT``, this process's pid;
  each task watches its parent and exits when the run is gone (``goggles/__init__.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator

from goggles import TASK_PARENT_ENV, run_mark
from goggles.io.lock import Holder

logger = logging.getLogger(__name__)

PREFIX = "goggles-kfp-"
OWNER = ".goggles-owner"


def make_scratch() -> str:
    """A new scratch folder under the system's temporary folder, owned by this process, after
    removing those of runs that are gone (:func:`remove_stale`)."""
    remove_stale()
    root = tempfile.mkdtemp(prefix=PREFIX)
    with open(os.path.join(root, OWNER), "wb") as handle:
        handle.write(Holder.this_process("goggles local pipeline scratch").to_bytes())
    return root


def keep(root: str) -> None:
    """Leave scratch folder ``root`` for the user (a failed run's task outputs): no later run
    removes it."""
    with contextlib.suppress(OSError):
        os.remove(os.path.join(root, OWNER))


def remove_stale(folder: str | None = None) -> list[str]:
    """Remove the scratch folders under ``folder`` (default: the temporary folder) whose owner
    is a process this machine can see is gone; returns them. Folders of live runs, of other
    hosts or containers, and those without an owner record are left alone."""
    parent = folder or tempfile.gettempdir()
    removed = []
    try:
        names = sorted(n for n in os.listdir(parent) if n.startswith(PREFIX))
    except OSError:
        return []
    for name in names:
        path = os.path.join(parent, name)
        try:
            with open(os.path.join(path, OWNER), "rb") as handle:
                holder = Holder.from_bytes(handle.read())
        except OSError:
            continue
        if holder is not None and holder.state() == "dead":
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        logger.info("removed %d scratch folder(s) of killed local runs, e.g. %s", len(removed),
                    removed[0])
    return removed


@contextlib.contextmanager
def tasks_die_with_this_process() -> Iterator[None]:
    """While the block runs, task processes started from here exit when this process is gone
    (``$GOGGLES_TASK_PARENT``; see the module docstring)."""
    before = os.environ.get(TASK_PARENT_ENV)
    os.environ[TASK_PARENT_ENV] = run_mark()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(TASK_PARENT_ENV, None)
        else:
            os.environ[TASK_PARENT_ENV] = before
