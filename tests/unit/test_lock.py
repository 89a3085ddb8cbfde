"""goggles.io.lock on local paths and memory:// (gs:// and s3:// against their protocol servers
are in tests/integration/test_object_storage.py): one holder at a time, the holder named, release,
stale locks on this machine, break_lock, and processes racing for one output.

"Fails at once" is checked by ordering, never by the clock: the loser of a race has exited while
the winner is still holding the lock, blocked on a line of stdin that the test has not sent.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import pytest

from goggles.config import IMAGE_EXTENSIONS
from goggles.io import listing, storage
from goggles.io.lock import (
    LOCK_NAME,
    Holder,
    LockHeld,
    LockUnsupported,
    OutputLock,
    break_lock,
    lock_uri,
    output_lock,
    read_holder,
)

ROOT = Path(__file__).resolve().parents[2]

# A run's lock in a process of its own: "ready" once imported, takes the lock on the line "go",
# releases it on the next line. A loser prints the LockHeld message and exits 3.
RACER = textwrap.dedent("""
    import sys
    from goggles.io.lock import LockHeld, output_lock

    output, note = sys.argv[1], sys.argv[2]
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        lock = output_lock(output, owner_note=note).acquire()
    except LockHeld as error:
        print("held", error, flush=True)
        sys.exit(3)
    print("acquired", flush=True)
    sys.stdin.readline()
    lock.release()
    print("released", flush=True)
""")


def start_racers(output: str, notes: list[str], env: dict[str, str] | None = None
                 ) -> list[subprocess.Popen[str]]:
    """One racer per note, each started and imported; none has asked for the lock yet."""
    child_env = {**os.environ, **(env or {}),
                 "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    racers = [subprocess.Popen([sys.executable, "-c", RACER, output, note], text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=child_env) for note in notes]
    for racer in racers:
        assert racer.stdout is not None
        line = racer.stdout.readline()
        assert line.strip() == "ready", racer.stderr.read() if racer.stderr else line
    return racers


def send(racer: subprocess.Popen[str], line: str) -> None:
    assert racer.stdin is not None
    racer.stdin.write(line + "\n")
    racer.stdin.flush()


def race(output: str, notes: list[str], env: dict[str, str] | None = None
         ) -> tuple[subprocess.Popen[str], list[tuple[subprocess.Popen[str], str]]]:
    """Start the racers together on one output; return the winner (still holding the lock,
    waiting for its release line) and each loser with its output. The losers have all exited
    before the winner is told to release: they did not wait for the lock."""
    racers = start_racers(output, notes, env)
    for racer in racers:
        send(racer, "go")
    winners, losers = [], []
    for racer in racers:
        assert racer.stdout is not None
        first = racer.stdout.readline().strip()
        if first == "acquired":
            winners.append(racer)
        else:
            _, err = racer.communicate(timeout=120)  # a hang guard only: it exits by itself
            losers.append((racer, f"{first}\n{err}"))
    try:
        assert len(winners) == 1, [text for _, text in losers]
        for loser, text in losers:
            assert loser.returncode == 3, text
            assert text.startswith("held "), text
        assert winners[0].poll() is None  # the winner still holds the lock
    except BaseException:
        for racer in racers:
            racer.kill()
            racer.wait()
        raise
    return winners[0], losers


def finish(winner: subprocess.Popen[str]) -> None:
    send(winner, "release")
    out, err = winner.communicate(timeout=120)
    assert winner.returncode == 0 and out.strip() == "released", err


@pytest.fixture(params=["local", "memory"])
def out(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh output URI on each store that needs no server (the folder does not exist yet)."""
    if request.param == "local":
        return str(tmp_path / "runs" / "out")
    return f"memory://test-lock-{uuid.uuid4().hex[:8]}/out"


def this_machine(**changes: object) -> Holder:
    """A holder record as a process of this machine and container would write it."""
    return dataclasses.replace(Holder.this_process("an earlier run"), **changes)  # type: ignore[arg-type]


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def plant(output: str, holder: Holder) -> str:
    """Write ``holder``'s lock record into ``output``, as a run that held the lock left it."""
    uri = lock_uri(output)
    storage.write_bytes(uri, holder.to_bytes())
    return uri


# -- one holder at a time -------------------------------------------------------------------------

def test_a_second_lock_fails_naming_the_holder_and_the_fix(out: str) -> None:
    with output_lock(out, owner_note="goggles run SRC --output OUT --num-classes 2") as first:
        assert first.held and first.uri == lock_uri(out)
        assert lock_uri(out).endswith(LOCK_NAME)
        with pytest.raises(LockHeld) as caught:
            output_lock(out, owner_note="the K=3 run").acquire()
        error = caught.value
        message = str(error)
        assert "\n" not in message  # the CLI prints it as one line
        assert f"output {out!r} is locked by another goggles run" in message
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
        assert first.holder.started_at in message and first.holder.user in message
        assert "note: goggles run SRC --output OUT --num-classes 2" in message
        assert (f"If that run is no longer running, remove {lock_uri(out)} "
                "(or run with --break-lock)") in message
        assert isinstance(error, storage.StorageError)
        assert error.holder == first.holder and error.state == "alive"
        assert error.output_uri == out and error.lock_uri == lock_uri(out)
        assert storage.exists(lock_uri(out))  # the loser left the winner's lock alone
    assert not storage.exists(lock_uri(out))
    with output_lock(out):  # free again
        pass


def test_the_lock_records_its_holder_and_hides_from_listings(out: str) -> None:
    with output_lock(out, owner_note="K=2") as lock:
        holder = read_holder(out)
        assert holder == lock.holder
        assert holder is not None
        assert (holder.host, holder.pid, holder.note) == (socket.gethostname(), os.getpid(),
                                                          "K=2")
        assert len(holder.token) == 32 and holder.goggles_version
        record = storage.read_json(lock_uri(out))
        assert {"host", "pid", "user", "started_at", "goggles_version", "note"} <= set(record)
        parent = out.rsplit("/", 1)[0]
        assert listing.list_files(parent, IMAGE_EXTENSIONS) == []  # never taken for an image
        if storage.is_local(out):
            assert sorted(p.name for p in Path(out).iterdir()) == [LOCK_NAME]  # no temporaries
    assert read_holder(out) is None


def test_an_error_in_the_run_releases_the_lock_and_propagates(out: str) -> None:
    with pytest.raises(RuntimeError, match="stage failed"):
        with output_lock(out):
            raise RuntimeError("stage failed")
    assert not storage.exists(lock_uri(out))


def test_acquire_release_without_with(out: str) -> None:
    lock = OutputLock(out)
    assert lock.acquire() is lock and lock.acquire() is lock  # a second acquire is a no-op
    lock.release()
    lock.release()  # and so is a second release
    assert not lock.held and not storage.exists(lock_uri(out))


def test_threads_of_one_process_get_one_lock(out: str) -> None:
    barrier = threading.Barrier(8)
    won: list[OutputLock] = []
    lost: list[LockHeld] = []

    def take() -> None:
        lock = output_lock(out)
        barrier.wait()
        try:
            won.append(lock.acquire())
        except LockHeld as error:
            lost.append(error)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and len(lost) == 7
    assert all(error.holder == won[0].holder for error in lost)
    won[0].release()


def test_two_processes_racing_for_one_local_output(tmp_path: Path) -> None:
    """The issue's case: K=2 and K=3 started together into one OUT. One runs; the other fails,
    while the first still holds the lock, naming it."""
    output = str(tmp_path / "out")
    winner, losers = race(output, ["K=2", "K=3"])
    (loser, text), = losers
    winner_note = "K=2" if "note: K=2" in text else "K=3"
    assert f"pid {winner.pid} on host {socket.gethostname()}" in text
    assert f"note: {winner_note}" in text and lock_uri(output) in text
    assert "--break-lock" in text
    holder = read_holder(output)
    assert holder is not None and holder.pid == winner.pid and holder.note == winner_note
    finish(winner)
    assert read_holder(output) is None and not os.path.exists(lock_uri(output))


def test_four_processes_one_winner(tmp_path: Path) -> None:
    output = str(tmp_path / "out")
    winner, losers = race(output, [f"racer-{i}" for i in range(4)])
    assert len(losers) == 3
    assert all(f"pid {winner.pid} " in text for _, text in losers)
    finish(winner)


def test_exclusive_create_without_hard_links(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem without hard links: the lock falls back to O_CREAT | O_EXCL."""
    def no_links(source: str, target: str) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    output = str(tmp_path / "out")
    with output_lock(output, owner_note="first") as lock:
        assert read_holder(output) == lock.holder
        with pytest.raises(LockHeld, match="note: first"):
            output_lock(output).acquire()
        assert sorted(p.name for p in Path(output).iterdir()) == [LOCK_NAME]
    assert not os.path.exists(lock_uri(output))


# -- release --------------------------------------------------------------------------------------

def test_release_of_a_vanished_lock_warns_and_does_not_raise(
        out: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="goggles.io.lock")
    with output_lock(out):
        storage.remove(lock_uri(out))  # someone removed it by hand
    assert "already gone" in caplog.text and lock_uri(out) in caplog.text


def test_release_leaves_a_lock_another_run_took_after_a_break(
        out: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="goggles.io.lock")
    first = output_lock(out, owner_note="first").acquire()
    storage.remove(lock_uri(out))  # broken by hand (break_lock refuses a live holder)
    with output_lock(out, owner_note="second") as second:
        first.release()  # must not remove the second run's lock
        assert read_holder(out) == second.holder
        assert "now belongs to" in caplog.text and "note: second" in caplog.text
    assert read_holder(out) is None


def test_a_retried_create_that_meets_its_own_lock_holds_it(out: str) -> None:
    """A create whose reply was lost and that was retried finds the lock with its own token."""
    lock = output_lock(out)
    plant(out, lock.holder)
    with lock:
        assert lock.held
    assert not storage.exists(lock_uri(out))


# -- stale locks ----------------------------------------------------------------------------------

def test_a_lock_whose_process_died_on_this_machine_is_broken_with_a_warning(
        out: str, caplog: pytest.LogCaptureFixture) -> None:
    if not this_machine().boot_id:
        pytest.skip("no /proc here: a dead holder cannot be recognised for sure")
    caplog.set_level(logging.WARNING, logger="goggles.io.lock")
    stale = this_machine(pid=dead_pid())
    assert stale.state() == "dead"
    plant(out, stale)
    with output_lock(out, owner_note="the rerun") as lock:
        assert read_holder(out) == lock.holder
    warning = caplog.text
    assert "breaking the stale lock" in warning and f"pid {stale.pid} " in warning


def test_a_lock_left_by_a_killed_process_is_broken(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A run killed with SIGKILL while holding the lock (its process is a zombie until reaped,
    and reaped after): the next run on this machine goes on."""
    if not this_machine().boot_id:
        pytest.skip("no /proc here: a dead holder cannot be recognised for sure")
    caplog.set_level(logging.WARNING, logger="goggles.io.lock")
    output = str(tmp_path / "out")
    (killed,) = start_racers(output, ["killed"])
    send(killed, "go")
    assert killed.stdout is not None and killed.stdout.readline().strip() == "acquired"
    killed.kill()
    os.waitid(os.P_PID, killed.pid, os.WEXITED | os.WNOWAIT)  # dead, not yet reaped: a zombie
    holder = read_holder(output)
    assert holder is not None and holder.pid == killed.pid and holder.state() == "dead"
    with output_lock(output) as lock:
        assert read_holder(output) == lock.holder
    killed.wait()
    assert f"pid {killed.pid} " in caplog.text and "stale" in caplog.text


def test_a_reused_pid_does_not_keep_a_stale_lock(out: str) -> None:
    """The holder's pid now belongs to another process (this one): another start time."""
    if not this_machine().boot_id:
        pytest.skip("no /proc here")
    stale = this_machine(process_start="1")
    assert stale.pid == os.getpid() and stale.state() == "dead"
    plant(out, stale)
    with output_lock(out) as lock:
        assert read_holder(out) == lock.holder


def test_a_stale_lock_is_reported_not_broken_when_asked(out: str) -> None:
    if not this_machine().boot_id:
        pytest.skip("no /proc here")
    stale = this_machine(pid=dead_pid())
    uri = plant(out, stale)
    with pytest.raises(LockHeld) as caught:
        output_lock(out, break_stale=False).acquire()
    assert caught.value.state == "dead"
    assert "no longer running on this machine (a stale lock)" in str(caught.value)
    assert f"remove {uri} (or run with --break-lock)" in str(caught.value)
    assert read_holder(out) == stale


@pytest.mark.parametrize("elsewhere", [
    {"host": "another-host"},
    {"pid_namespace": "pid:[1]"},  # another container on this host
    {"boot_id": "00000000-0000-0000-0000-000000000000"},  # an earlier boot, or another machine
])
def test_a_lock_from_elsewhere_is_never_broken_automatically(out: str,
                                                              elsewhere: dict) -> None:
    holder = this_machine(pid=dead_pid(), **elsewhere)
    assert holder.state() == "unknown"
    plant(out, holder)
    with pytest.raises(LockHeld) as caught:
        output_lock(out).acquire()
    message = str(caught.value)
    assert caught.value.state == "unknown" and caught.value.holder == holder
    assert f"pid {holder.pid} on host {holder.host}" in message
    if holder.host == socket.gethostname():
        assert f"no pid {holder.pid} runs in this container now" in message
    assert read_holder(out) == holder  # left alone
    assert break_lock(out) == holder  # what --break-lock does
    with output_lock(out):
        pass


def test_an_unreadable_lock_is_reported(out: str) -> None:
    storage.write_bytes(lock_uri(out), b"")
    with pytest.raises(LockHeld, match="lock record is unreadable"):
        output_lock(out).acquire()
    assert break_lock(out) is None  # removed; there was no holder to name
    assert not storage.exists(lock_uri(out))


# -- break_lock, stores ---------------------------------------------------------------------------

def test_break_lock_on_an_unlocked_output(out: str) -> None:
    assert break_lock(out) is None
    assert read_holder(out) is None


def test_unsupported_protocols_are_refused() -> None:
    with pytest.raises(LockUnsupported, match="local paths, memory://, gs:// and s3:// only"):
        output_lock("https://example.com/out")
    with pytest.raises(LockUnsupported):
        break_lock("ftp://example.com/out")


def test_file_uris_are_local(tmp_path: Path) -> None:
    output = f"file://{tmp_path}/out"
    with output_lock(output) as lock:
        assert (tmp_path / "out" / LOCK_NAME).is_file()
        with pytest.raises(LockHeld):
            output_lock(str(tmp_path / "out")).acquire()  # the same folder, spelt as a path
        assert lock.held
    assert not (tmp_path / "out" / LOCK_NAME).exists()


# -- --break-lock: after every other check, never a live holder ------------------------------------

def test_break_lock_refuses_a_live_holder_and_acts_only_after_the_checks(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from goggles.cli import main

    out = str(tmp_path / "out")
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8), (i * 90, 0, 0)).save(images / f"{i}.png")
    (racer,) = start_racers(out, ["live run"])
    try:
        send(racer, "go")
        assert racer.stdout is not None and racer.stdout.readline().strip() == "acquired"
        holder = read_holder(out)
        assert holder is not None and holder.state() == "alive"
        # a run that cannot start leaves the lock alone
        assert main(["run", str(tmp_path / "no-such-src"), "--output", out, "--num-classes",
                     "2", "--break-lock"]) == 2
        err = capsys.readouterr().err
        assert "does not exist" in err and err.count("\n") == 1, err
        assert read_holder(out) == holder
        # a run that could start still does not take the lock of a live process
        assert main(["run", str(images), "--output", out, "--num-classes", "2",
                     "--break-lock"]) == 1
        err = capsys.readouterr().err
        assert "still running on this machine" in err and f"kill {holder.pid}" in err, err
        assert read_holder(out) == holder
        with pytest.raises(LockHeld, match="still running"):
            break_lock(out)
    finally:
        send(racer, "release")
        racer.communicate(timeout=60)
    assert read_holder(out) is None
