"""goggles: automatic image labeling with affinity coding (GOGGLES, Das et al.)."""

import os as _os

__version__ = "0.1.0"

__all__ = ["__version__"]

TASK_PARENT_ENV = "GOGGLES_TASK_PARENT"
"""Set by kfp's local runner (:mod:`goggles.kubeflow.scratch`) to its own pid for the task
processes it starts: a task whose run is gone exits (a SIGKILLed run leaves no task)."""


def _process(pid: int) -> tuple[int, str, str] | None:
    """(parent pid, state, start time) of a running process from /proc, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    state = fields[0].decode()
    return (None if state in ("Z", "X") else  # type: ignore[return-value]
            (int(fields[1]), state, fields[19].decode()))


def run_mark() -> str:
    """This process as ``$GOGGLES_TASK_PARENT`` names it: ``pid:start time``."""
    me = _process(_os.getpid())
    return f"{_os.getpid()}:{me[2] if me else ''}"


def _exit_with_the_local_runner() -> None:
    """In a task process of a local pipeline run (it inherited ``$GOGGLES_TASK_PARENT``, the
    run's pid and start time), exit as soon as that run is gone: kfp's local runner starts its
    tasks as plain subprocesses (through a shell), which a SIGKILL of the run would otherwise
    leave running. A thread checks the run twice a second; a task started after the run died
    exits at once. Nothing happens in any other process."""
    pid, _, started = _os.environ.get(TASK_PARENT_ENV, "").partition(":")
    if not pid.isdigit() or int(pid) == _os.getpid() or not started \
            or not _os.path.isdir("/proc"):
        return
    parent = int(pid)

    def gone() -> bool:
        now = _process(parent)
        return now is None or now[2] != started

    if gone():
        _os._exit(137)
    import threading
    import time

    def watch() -> None:
        while not gone():
            time.sleep(0.5)
        _os._exit(137)  # the run was killed: stop now, as it did

    threading.Thread(target=watch, name="goggles-run-watch", daemon=True).start()


_exit_with_the_local_runner()
