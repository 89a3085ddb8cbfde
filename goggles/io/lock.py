"""One writer per output folder: the lock object ``OUT/.goggles.lock``.

Two runs into one OUT would interleave their artifacts and both report success. A run therefore
takes OUT's lock before any stage runs and keeps it until it has written its last output; a
second run into the same OUT fails at once with :class:`LockHeld`, whose message names the
holder and how to break a lock its run left behind.

How a runner uses it (``goggles/pipeline/inprocess.py``, ``goggles/kubeflow/runner.py``)::

    from goggles.io.lock import break_lock, output_lock

    configs = check_run(params)                    # parameters first: a bad one fails the same
    if break_requested:                            # ``goggles run --break-lock``
        break_lock(params.output_uri)              # returns the Holder it removed, or None
    with output_lock(params.output_uri, owner_note=" ".join(sys.argv)):
        ...                                        # every stage, then metrics.json/report.html

* ``output_lock(output_uri, *, owner_note="", break_stale=True) -> OutputLock``: an
  :class:`OutputLock`; ``with`` acquires it and releases it on the way out, exception or not.
  Without ``with``: ``lock.acquire()`` ... ``lock.release()`` (in a ``finally``).
  ``owner_note`` is free text shown to whoever finds OUT locked (the command line, a run id).
* ``acquire()`` raises :class:`LockHeld` (a :class:`~goggles.io.storage.StorageError`: the CLI
  prints ``goggles: error: LockHeld: <message>``, exit status 1) when another run holds OUT;
  :class:`LockUnsupported` (also a StorageError) when OUT's store cannot create an object
  exclusively, so that no lock there could be trusted. Storage failures keep their own
  StorageError (a missing bucket, no permission).
* ``release()`` never raises: a lock that vanished or now belongs to another run is left as it is,
  with a warning in the log.
* ``break_lock(output_uri) -> Holder | None``: removes the lock whoever holds it (the user says
  that run is gone) and returns its holder, for the log; None when OUT was not locked.
* ``read_holder(output_uri) -> Holder | None`` and ``lock_uri(output_uri) -> str``, for messages.

The lock is the object ``OUT/.goggles.lock`` (hidden, and no image suffix: ingesting a parent
folder never lists it). Its body is JSON: host, pid, user, started_at (UTC, ISO 8601), goggles
version, the note, a random token, and the boot id, pid namespace and start time of the
process, which together identify the holder on its own machine.

**Exclusive create, per store**

* local paths and ``file://``: the body is written to a hidden temporary beside the lock and
  hard-linked onto ``.goggles.lock`` (``link`` fails with EEXIST when the name is taken, and a
  reader never sees a half-written body); on a filesystem without hard links,
  ``os.open(O_CREAT | O_EXCL)``.
* ``gs://``: an upload with the precondition ``ifGenerationMatch=0`` (gcsfs ``mode="create"``):
  GCS answers 412 when the object exists.
* ``s3://``: ``PutObject`` with ``If-None-Match: *`` (s3fs ``mode="create"``; S3 conditional
  writes, botocore >= 1.35.20): S3 answers 412 when the object exists, 409 while another
  conditional write of it is in flight.
* ``memory://`` (one process's store): a check and a write under a process-wide
  ``threading.Lock``.
* anything else: :class:`LockUnsupported`.

On ``gs://`` and ``s3://`` a store that ignores the precondition (some S3-compatible servers)
would let two runs both "create" the lock, so each acquisition repeats its create once more and
expects it to be refused; when the store accepts it, the lock is removed again and
:class:`LockUnsupported` raised. A create whose reply was lost and that is retried meets its own
lock: the token in the body tells it is ours.

**Stale locks.** A run killed with SIGKILL or a lost machine leaves its lock behind. The lock is
broken automatically only when goggles is sure its holder is gone: the same host name, boot id
and pid namespace as this process (so the same machine and container, where pids mean the same
process) and that pid no longer running, a zombie, or now a different process (another start
time). Such a lock is removed with a warning naming it and the run goes on
(``break_stale=False`` turns this off). Anything less certain (another host, another container,
a machine rebooted since, a store shared between machines) is never broken automatically: the
holder may still be running, and two writers are worse than one refusal; the message then says
what is known and how to remove the lock. A lock has no expiry time, because a healthy run may
take hours.

Removing a lock (release, a stale break, :func:`break_lock`) is conditional on the version that
was read: the object's generation on GCS (``ifGenerationMatch``), its ETag on S3 (``If-Match``),
its body under an ``flock`` of OUT locally, so a run never deletes a lock another run has taken
meanwhile.

Scope: the lock serialises runs that take it. A cluster submission (``goggles submit``) returns
before its pipeline runs, so the submitting process cannot hold a lock for that run.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import uuid
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from typing import Literal

import goggles
from goggles.io import storage
from goggles.io.lock_stores import LockUnsupported, _store
from goggles.io.uris import join, redact

__all__ = ["Holder", "LockHeld", "LockUnsupported", "OutputLock", "break_lock", "lock_uri",
           "output_lock", "read_holder"]

logger = logging.getLogger(__name__)

LOCK_NAME = ".goggles.lock"
_FORMAT = "goggles output lock 1"
_ACQUIRE_ROUNDS = 4  # a create, a stale break, a lock released between create and read, ...

State = Literal["alive", "dead", "unknown"]


class LockHeld(storage.StorageError):
    """Another run holds the output folder's lock; the message names it and how to break it."""

    def __init__(self, message: str, *, output_uri: str = "", lock_uri: str = "",
                 holder: Holder | None = None, state: State = "unknown"):
        super().__init__(message)
        self.output_uri = output_uri
        self.lock_uri = lock_uri
        self.holder = holder
        self.state = state


# -- who holds it ---------------------------------------------------------------------------------

def _read_text(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _process_start(pid: int) -> str | None:
    """The start time (clock ticks since boot) of process ``pid``; None when no such process runs
    or it is a zombie; "" when this system has no /proc."""
    if pid <= 0:
        return None
    stat = _read_text(f"/proc/{pid}/stat")
    if stat:
        fields_after_name = stat.rsplit(")", 1)[-1].split()
        if len(fields_after_name) > 19 and fields_after_name[0] not in ("Z", "X"):
            return fields_after_name[19]
        return None
    if os.path.isdir("/proc/self"):
        return None  # /proc is there and the process is not
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return ""


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


@dataclass(frozen=True)
class Holder:
    """The run that holds a lock, as its lock object records it."""

    host: str
    pid: int
    user: str
    started_at: str
    goggles_version: str
    note: str
    token: str
    boot_id: str = ""
    pid_namespace: str = ""
    process_start: str = ""

    @classmethod
    def this_process(cls, note: str = "") -> Holder:
        return cls(host=socket.gethostname(), pid=os.getpid(), user=_user(),
                   started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   goggles_version=goggles.__version__, note=note, token=uuid.uuid4().hex,
                   boot_id=_read_text("/proc/sys/kernel/random/boot_id"),
                   pid_namespace=_pid_namespace(),
                   process_start=_process_start(os.getpid()) or "")

    def to_bytes(self) -> bytes:
        return (json.dumps({"format": _FORMAT, **asdict(self)}, indent=2, sort_keys=True)
                + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Holder | None:
        """The holder a lock body records; None when the body is not one."""
        try:
            record = json.loads(data)
            values = {f.name: record[f.name] for f in fields(cls) if f.name in record}
            holder = cls(**values)
        except (ValueError, TypeError):
            return None
        if not isinstance(holder.pid, int) or not isinstance(holder.token, str):
            return None
        return holder

    def describe(self) -> str:
        note = f", note: {' '.join(self.note.split())}" if self.note.strip() else ""
        return (f"pid {self.pid} on host {self.host} (user {self.user}, started "
                f"{self.started_at}, goggles {self.goggles_version}{note})")

    def state(self) -> State:
        """"dead" when this process can be sure the holder no longer runs, "alive" when it can see
        it running, "unknown" otherwise (another host, container or boot)."""
        here = Holder.this_process()
        if not (self.host == here.host and self.boot_id and self.boot_id == here.boot_id
                and self.pid_namespace and self.pid_namespace == here.pid_namespace):
            return "unknown"
        started = _process_start(self.pid)
        if started is None:
            return "dead"
        if self.process_start and started and started != self.process_start:
            return "dead"  # the pid now belongs to a later process
        return "alive"


# -- the lock -------------------------------------------------------------------------------------

def lock_uri(output_uri: str) -> str:
    """The URI of ``output_uri``'s lock object."""
    return join(output_uri.rstrip("/") if "://" in output_uri else output_uri, LOCK_NAME)


def read_holder(output_uri: str) -> Holder | None:
    """Who holds ``output_uri``'s lock (None when it is not locked or the body is unreadable)."""
    current = _store(lock_uri(output_uri)).read()
    return Holder.from_bytes(current[0]) if current else None


def _held_message(output_uri: str, uri: str, holder: Holder | None, state: State) -> str:
    shown, lock_shown = redact(output_uri), redact(uri)
    if holder is None:
        who = "a run whose lock record is unreadable (being written, or damaged)"
    else:
        who = holder.describe()
        here = socket.gethostname()
        if state == "dead":
            who += "; that process is no longer running on this machine (a stale lock)"
        elif holder.host == here and _process_start(holder.pid) is None:
            who += (f"; no pid {holder.pid} runs in this container now, but the lock may come "
                    "from another container or an earlier boot of this host")
    return (f"output {shown!r} is locked by another goggles run: {who}. Two runs into one "
            f"output would mix their files, so this run stops. If that run is no longer "
            f"running, remove {lock_shown} (or run with --break-lock); otherwise wait for it "
            "or choose another output")


class OutputLock:
    """The lock of one output folder; ``with`` takes and releases it (see the module docs)."""

    def __init__(self, output_uri: str, *, owner_note: str = "", break_stale: bool = True):
        self.output_uri = output_uri
        self.uri = lock_uri(output_uri)
        self.break_stale = break_stale
        self.holder = Holder.this_process(owner_note)
        self.held = False
        self._store = _store(self.uri)
        # a local output folder the lock creates is removed with it if the run left it empty,
        # so a run that fails before writing anything leaves nothing behind
        local = storage.is_local(output_uri)
        self._made_folder = local and not os.path.exists(storage.local_path(output_uri))

    def acquire(self) -> OutputLock:
        """Take the lock or raise :class:`LockHeld` at once; never waits for another run."""
        if self.held:
            return self
        body = self.holder.to_bytes()
        holder: Holder | None = None
        state: State = "unknown"
        for _ in range(_ACQUIRE_ROUNDS):
            if self._store.create(body):
                self.held = True
                try:
                    self._store.check_exclusive(body)
                except BaseException:
                    self.release()  # ours, whatever went wrong: do not leave it behind
                    raise
                logger.info("locked %s for this run (%s)", redact(self.output_uri),
                            redact(self.uri))
                return self
            current = self._store.read()
            if current is None:
                continue  # released between our create and our read: try again
            data, version = current
            holder = Holder.from_bytes(data)
            if holder is not None and holder.token == self.holder.token:
                self.held = True  # our own create, retried after its reply was lost
                return self
            state = holder.state() if holder is not None else "unknown"
            if state == "dead" and self.break_stale and holder is not None:
                logger.warning("breaking the stale lock %s of %s: that process is no longer "
                               "running on this machine", redact(self.uri), holder.describe())
                self._store.delete(version)  # only that lock: one taken meanwhile stays
                continue
            break
        raise LockHeld(_held_message(self.output_uri, self.uri, holder, state),
                       output_uri=self.output_uri, lock_uri=self.uri, holder=holder,
                       state=state)

    def release(self) -> None:
        """Remove the lock if it is still this run's; never raises (a warning says what
        happened)."""
        if not self.held:
            return
        self.held = False
        try:
            current = self._store.read()
            if current is None:
                logger.warning("the lock %s was already gone when this run finished (was it "
                               "broken with --break-lock?)", redact(self.uri))
                return
            data, version = current
            holder = Holder.from_bytes(data)
            if holder is None or holder.token != self.holder.token:
                who = holder.describe() if holder else "an unreadable record"
                logger.warning("the lock %s now belongs to %s, not this run (this run's lock was "
                               "broken); leaving it", redact(self.uri), who)
                return
            outcome = self._store.delete(version)
            if outcome != "deleted":
                logger.warning("the lock %s changed while this run removed it (%s); leaving "
                               "it", redact(self.uri), outcome)
            elif self._made_folder:
                try:
                    os.rmdir(storage.local_path(self.output_uri))
                except OSError:
                    pass  # the run wrote into it: keep it
        except Exception as error:  # noqa: BLE001 - releasing must not hide the run's outcome
            logger.warning("could not remove the lock %s (%s: %s); remove it by hand before "
                           "the next run into %s", redact(self.uri), type(error).__name__,
                           error, redact(self.output_uri))

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def output_lock(output_uri: str, *, owner_note: str = "",
                break_stale: bool = True) -> OutputLock:
    """The lock of ``output_uri``: ``with output_lock(OUT, owner_note=...) as lock: ...``."""
    return OutputLock(output_uri, owner_note=owner_note, break_stale=break_stale)


def break_lock(output_uri: str) -> Holder | None:
    """Remove ``output_uri``'s lock; returns the holder removed (None when there was no lock).
    For a run the user knows is gone (``--break-lock``): a holder this machine can see running
    (same host, boot and pid namespace, its pid still that process) is never removed, it raises
    :class:`LockHeld` instead; one on another host or container is the user's word."""
    store = _store(lock_uri(output_uri))
    for _ in range(_ACQUIRE_ROUNDS):
        current = store.read()
        if current is None:
            return None
        data, version = current
        holder = Holder.from_bytes(data)
        if holder is not None and holder.state() == "alive":
            raise LockHeld(f"not breaking the lock {redact(lock_uri(output_uri))}: its holder, "
                           f"{holder.describe()}, is still running on this machine; wait for "
                           f"it or stop it (kill {holder.pid}) first", output_uri=output_uri,
                           lock_uri=lock_uri(output_uri), holder=holder, state="alive")
        if store.delete(version) == "deleted":
            logger.warning("removed the lock %s of %s", redact(lock_uri(output_uri)),
                           holder.describe() if holder else "an unreadable record")
            return holder
    raise LockHeld(f"could not break the lock {redact(lock_uri(output_uri))}: other runs keep "
                   "taking it; stop them first", output_uri=output_uri,
                   lock_uri=lock_uri(output_uri), holder=None, state="unknown")
