"""Object storage end to end: `goggles run gs://…` and `goggles run s3://…` against real
GCS-protocol (fake-gcs-server) and S3 (moto) servers on 127.0.0.1, with source images, weights,
dev labels and outputs all in buckets; the same runs through a proxy that injects 503s, resets
and cut-off replies; and writers killed between write and commit.

Endpoints and credentials reach the `goggles` process only through its environment
(``STORAGE_EMULATOR_HOST``; ``AWS_ENDPOINT_URL_S3`` and the AWS variables), as in production.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from goggles.io import listing, retries, storage, transfer
from goggles.io import lock as lock_module
from goggles.io.lock import (
    LockHeld,
    LockUnsupported,
    break_lock,
    lock_uri,
    output_lock,
    read_holder,
)
from tests.conftest import CUB_DEV
from tests.integration.servers import S3_TEST_SECRET, FaultyProxy, GCSServer, S3Server
from tests.unit.test_lock import dead_pid, finish, plant, race, this_machine

pytestmark = [pytest.mark.integration]

SPECIES = ("001", "014")  # Black-footed Albatross, Indigo Bunting
PER_SPECIES = 20
DATA_BUCKET = "goggles-data"
OUT_BUCKET = "goggles-out"
RUN_OPTIONS = ["--num-classes", "2", "--backbone", "mobilenet_v2", "--shards", "2",
               "--seed", "0", "--device", "cpu", "--follow-symlinks"]
COMPARED = ["image_id", "probs", "label", "label_name", "confidence"]


# -- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image_set() -> dict[str, Path]:
    """``species/file.jpg`` -> the real cub-dev file (read in place, never copied)."""
    if not CUB_DEV.is_dir():
        pytest.skip(f"cub-dev not found at {CUB_DEV}")
    images: dict[str, Path] = {}
    for prefix in SPECIES:
        folder = next(p for p in sorted(CUB_DEV.iterdir()) if p.name.startswith(prefix + "."))
        for image in sorted(folder.iterdir())[:PER_SPECIES]:
            images[f"{folder.name}/{image.name}"] = image
    return images


@pytest.fixture(scope="module")
def weights() -> bytes:
    """MobileNetV2's ImageNet weights as a torchvision state dict (uploaded as --weights)."""
    import torch

    from goggles.features.backbones import resolve_weights

    state, _ = resolve_weights("mobilenet_v2")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def dev_csv(image_set: dict[str, Path]) -> bytes:
    """Dev labels naming the clusters: two images per species, as ``folder/file`` URIs."""
    rows = ["uri,label"]
    for prefix in SPECIES:
        names = [name for name in image_set if name.startswith(prefix + ".")][:2]
        rows += [f"{name},{name.split('/')[0].split('.', 1)[1]}" for name in names]
    return ("\n".join(rows) + "\n").encode()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory, image_set: dict[str, Path],
              weights: bytes, dev_csv: bytes) -> pa.Table:
    """The reference: the same images, weights and dev labels from local files."""
    root = tmp_path_factory.mktemp("local")
    for name, image in image_set.items():
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "images" / name).symlink_to(image)
    (root / "weights.pth").write_bytes(weights)
    (root / "dev.csv").write_bytes(dev_csv)
    goggles_run(str(root / "images"), str(root / "out"), {}, weights=str(root / "weights.pth"),
                dev_labels=str(root / "dev.csv"))
    return pq.read_table(root / "out" / "labels.parquet")


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, GCSServer | S3Server]]:
    """A GCS and an S3 server on loopback, each with a data and an output bucket."""
    with GCSServer() as gcs, S3Server() as s3:
        for server in (gcs, s3):
            server.create_bucket(DATA_BUCKET)
            server.create_bucket(OUT_BUCKET)
        yield {"gs": gcs, "s3": s3}


@pytest.fixture(scope="module")
def uploaded(servers: dict, image_set: dict[str, Path], weights: bytes,
             dev_csv: bytes) -> dict[str, GCSServer | S3Server]:
    """The real images, the weights and the dev labels uploaded through each server's API."""
    for protocol, server in servers.items():
        with environment(server.environment(server.url)):
            fs = fresh_filesystem(protocol)
            uploads = {f"{DATA_BUCKET}/images/{name}": path.read_bytes()
                       for name, path in image_set.items()}
            uploads[f"{DATA_BUCKET}/weights/mobilenet_v2.pth"] = weights
            uploads[f"{DATA_BUCKET}/dev.csv"] = dev_csv
            fs.pipe(uploads)
            assert len(fs.find(f"{DATA_BUCKET}/images")) == len(image_set)
    return servers


# -- helpers --------------------------------------------------------------------------------------

class environment:  # noqa: N801 - used like a function
    """Set environment variables in this process for a block (for in-process clients)."""

    def __init__(self, values: dict[str, str]):
        self.values = values
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> None:
        for key, value in self.values.items():
            self.saved[key] = os.environ.get(key)
            os.environ[key] = value
        for protocol in ("gs", "s3"):
            fsspec.get_filesystem_class(protocol).clear_instance_cache()

    def __exit__(self, *exc: object) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def fresh_filesystem(protocol: str) -> fsspec.AbstractFileSystem:
    fsspec.get_filesystem_class(protocol).clear_instance_cache()
    return fsspec.filesystem(protocol)


def goggles_run(source: str, output: str, env: dict[str, str], *, weights: str,
                dev_labels: str, expect_success: bool = True,
                runner: str = "inprocess") -> subprocess.CompletedProcess[str]:
    """`goggles run` in a child process whose environment names the endpoint."""
    command = [sys.executable, "-m", "goggles.cli", "run", source, "--output", output,
               "--weights", weights, "--dev-labels", dev_labels, *RUN_OPTIONS,
               "--runner", runner]
    child_env = {**os.environ, **env, "GOGGLES_STORAGE_RETRY_DELAY_S": "0.05"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=child_env)
    if expect_success:
        assert done.returncode == 0, done.stderr[-5000:]
    return done


def relative_uris(labels: pa.Table, marker: str = "/images/") -> list[str]:
    return [uri.split(marker, 1)[1] for uri in labels["uri"].to_pylist()]


def assert_same_labels(remote: pa.Table, local: pa.Table) -> None:
    assert relative_uris(remote) == relative_uris(local)
    assert remote.select(["label", "label_name"]).equals(local.select(["label", "label_name"]))
    np.testing.assert_allclose(np.array(remote["probs"].to_pylist()),
                               np.array(local["probs"].to_pylist()), rtol=0, atol=1e-6)
    assert remote["image_id"].equals(local["image_id"])


def remote_run(protocol: str, server: GCSServer | S3Server, endpoint: str, run_name: str,
               runner: str = "inprocess") -> tuple[pa.Table, dict[str, bytes]]:
    """Run against ``endpoint``; return the labels and every object written to the output."""
    env = server.environment(endpoint)
    data = f"{protocol}://{DATA_BUCKET}"
    output = f"{protocol}://{OUT_BUCKET}/{run_name}"
    done = goggles_run(f"{data}/images", output, env,
                       weights=f"{data}/weights/mobilenet_v2.pth",
                       dev_labels=f"{data}/dev.csv", runner=runner)
    assert S3_TEST_SECRET not in done.stdout + done.stderr, "a credential reached the log"
    with environment(server.environment(server.url)):
        fs = fresh_filesystem(protocol)
        written = {path: fs.cat_file(path) for path in fs.find(f"{OUT_BUCKET}/{run_name}")}
    labels = pq.read_table(io.BytesIO(written[f"{OUT_BUCKET}/{run_name}/labels.parquet"]))
    return labels, written


def assert_complete_outputs(written: dict[str, bytes], run_name: str) -> None:
    names = {path.split(f"{run_name}/", 1)[1] for path in written}
    assert {"labels.parquet", "manifest.parquet", "metrics.json", "report.html"} <= names
    assert any(name.startswith("artifacts/affinity/") for name in names)
    leftovers = [n for n in names if storage.TEMPORARY_TAG in n]
    assert not leftovers, f"temporaries left in the bucket: {leftovers}"
    secret = S3_TEST_SECRET.encode()
    assert not [path for path, data in written.items() if secret in data], \
        "a credential reached an artifact"


# -- end to end -----------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.data
@pytest.mark.parametrize("protocol", ["gs", "s3"])
def test_bucket_run_matches_local_run(protocol: str, uploaded: dict,
                                      local_run: pa.Table) -> None:
    server = uploaded[protocol]
    labels, written = remote_run(protocol, server, server.url, "plain")
    assert labels.num_rows == 2 * PER_SPECIES
    assert all(uri.startswith(f"{protocol}://{DATA_BUCKET}/images/")
               for uri in labels["uri"].to_pylist())
    assert_same_labels(labels, local_run)
    assert set(labels["label_name"].to_pylist()) == {"Black_footed_Albatross", "Indigo_Bunting"}
    assert_complete_outputs(written, "plain")


@pytest.mark.slow
@pytest.mark.data
def test_bucket_run_with_the_kfp_local_runner_matches_local_run(uploaded: dict,
                                                                local_run: pa.Table) -> None:
    """The default runner: every pipeline task reads and writes the buckets itself."""
    server = uploaded["gs"]
    labels, written = remote_run("gs", server, server.url, "kfp-local", runner="local")
    assert_same_labels(labels, local_run)
    assert_complete_outputs(written, "kfp-local")


@pytest.mark.slow
@pytest.mark.data
def test_run_killed_mid_way_resumes_from_the_bucket(uploaded: dict,
                                                    local_run: pa.Table) -> None:
    """SIGKILL `goggles run gs://…` while it computes the second affinity shard: the rerun
    trusts the stages the bucket holds complete, redoes the rest, and labels as before."""
    server = uploaded["gs"]
    env = {**os.environ, **server.environment(server.url)}
    data, output = f"gs://{DATA_BUCKET}", f"gs://{OUT_BUCKET}/resumed"
    # -v: the stage records' "running"/"reusing" messages are goggles' INFO log, shown with -v
    command = [sys.executable, "-m", "goggles.cli", "-v", "run", f"{data}/images", "--output",
               output, "--weights", f"{data}/weights/mobilenet_v2.pth", "--dev-labels",
               f"{data}/dev.csv", *RUN_OPTIONS, "--runner", "inprocess"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               text=True, env=env)
    assert process.stderr is not None
    log = []
    for line in process.stderr:
        log.append(line)
        if "running affinity-00001" in line:
            os.kill(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(log)[-3000:]
    with environment(server.environment(server.url)):
        assert not storage.exists(f"{output}/labels.parquet")
        assert storage.exists(f"{output}/artifacts/_stages/extract.json")

    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "reusing extract" in done.stderr and "running affinity-00001" in done.stderr
    with environment(server.environment(server.url)):
        labels = storage.read_parquet(f"{output}/labels.parquet")
    assert_same_labels(labels, local_run)


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.parametrize("protocol", ["gs", "s3"])
def test_run_through_a_faulty_proxy_matches_local_run(protocol: str, uploaded: dict,
                                                      local_run: pa.Table) -> None:
    server = uploaded[protocol]
    with FaultyProxy(server.url, fail_rate=0.08, seed=11) as proxy:
        labels, written = remote_run(protocol, server, proxy.url, "faulty")
    injected = sum(proxy.counts[mode] for mode in ("503", "reset", "truncate"))
    assert proxy.counts["requests"] >= 100 and injected >= 5, proxy.counts
    assert_same_labels(labels, local_run)
    assert_complete_outputs(written, "faulty")


@pytest.mark.slow
@pytest.mark.data
def test_missing_weights_object_fails_with_its_name(uploaded: dict) -> None:
    server = uploaded["gs"]
    missing = f"gs://{DATA_BUCKET}/weights/no-such-file.pth"
    done = goggles_run(f"gs://{DATA_BUCKET}/images", f"gs://{OUT_BUCKET}/missing",
                       server.environment(server.url), weights=missing,
                       dev_labels=f"gs://{DATA_BUCKET}/dev.csv", expect_success=False)
    assert done.returncode == 2  # refused with the other inputs, before any stage runs
    assert missing in done.stderr and "cannot be read" in done.stderr, done.stderr[-3000:]
    assert "goggles: error:" in done.stderr and "ingest" not in done.stderr.lower()


@pytest.mark.parametrize("protocol", ["gs", "s3"])
def test_missing_object_fails_fast_with_its_name(protocol: str, servers: dict) -> None:
    server = servers[protocol]
    uri = f"{protocol}://{DATA_BUCKET}/images/nowhere/missing.jpg"
    # every request goes through a proxy that fails none and records them all
    with FaultyProxy(server.url, fail_rate=0.0) as proxy, \
            environment(server.environment(proxy.url)):
        with pytest.raises(FileNotFoundError):  # what one bare call of the client asks
            fresh_filesystem(protocol).cat_file(uri.split("://", 1)[1])
        one_call, proxy.requests[:] = list(proxy.requests), []
        assert one_call and all("missing.jpg" in r for r in one_call), one_call
        fresh_filesystem(protocol)
        with pytest.raises(storage.MissingObjectError, match=uri):
            storage.read_bytes(uri)
        assert proxy.requests == one_call  # a permanent error: exactly one attempt, no retry
        assert not storage.exists(uri)
        with pytest.raises(storage.StorageError, match=f"no image files under '{protocol}://"):
            from goggles.ingest.config import IngestConfig
            from goggles.ingest.manifest import build_manifest

            build_manifest(f"{protocol}://{DATA_BUCKET}/no-such-prefix", IngestConfig())


@pytest.mark.parametrize("protocol", ["gs", "s3"])
def test_reads_and_listing_survive_a_proxy_that_fails_a_third_of_requests(
        protocol: str, servers: dict) -> None:
    server = servers[protocol]
    rng = np.random.default_rng(5)
    objects = {f"{DATA_BUCKET}/flaky/{i // 10}/{i:03d}.jpg":
               rng.bytes(int(rng.integers(10_000, 60_000))) for i in range(40)}
    with environment(server.environment(server.url)):
        fresh_filesystem(protocol).pipe(objects)
    previous = storage.set_retry_policy(retries.RetryPolicy(max_attempts=10,
                                                             initial_delay_s=0.05))
    try:
        with FaultyProxy(server.url, fail_rate=0.33, seed=3) as proxy, \
                environment(server.environment(proxy.url)):
            listed = listing.list_files(f"{protocol}://{DATA_BUCKET}/flaky", (".jpg",))
            got = dict(transfer.read_many([f.uri for f in listed], max_concurrency=8))
    finally:
        storage.set_retry_policy(previous)
    assert [f.uri for f in listed] == [f"{protocol}://{path}" for path in sorted(objects)]
    assert [got[f"{protocol}://{path}"] for path in sorted(objects)] == \
        [objects[path] for path in sorted(objects)]
    assert sum(proxy.counts[m] for m in ("503", "reset", "truncate")) >= 5, proxy.counts


def test_goggles_retries_what_the_client_library_gives_up_on(
        servers: dict, caplog: pytest.LogCaptureFixture) -> None:
    """With botocore's own retries off (AWS_MAX_ATTEMPTS=1) s3fs passes 503s straight up; the
    storage layer's backoff must carry every write, commit, listing and read through."""
    server = servers["s3"]
    caplog.set_level("WARNING", logger="goggles.io.retries")
    previous = storage.set_retry_policy(retries.RetryPolicy(max_attempts=12,
                                                             initial_delay_s=0.02))
    rng = np.random.default_rng(9)
    objects = {f"s3://{OUT_BUCKET}/own-retries/{i:02d}.jpg": rng.bytes(5_000) for i in range(15)}
    try:
        with FaultyProxy(server.url, fail_rate=0.2, seed=2, modes=("503",)) as proxy, \
                environment({**server.environment(proxy.url), "AWS_MAX_ATTEMPTS": "1"}):
            for uri, data in objects.items():
                storage.write_bytes(uri, data)
            listed = listing.list_files(f"s3://{OUT_BUCKET}/own-retries", (".jpg",))
            got = dict(transfer.read_many(list(objects), max_concurrency=4))
    finally:
        storage.set_retry_policy(previous)
    assert [f.uri for f in listed] == sorted(objects)
    assert got == objects
    retried = [r.getMessage() for r in caplog.records if "transient" in r.getMessage()]
    assert proxy.counts["503"] >= 5 and len(retried) >= 5, (proxy.counts, retried[:3])
    assert all("s3://" in message for message in retried)  # each names its URI


# -- crashes --------------------------------------------------------------------------------------

STALLED_WRITER = textwrap.dedent("""
    import sys, time
    import pyarrow as pa
    from goggles.io import storage

    mode, uri = sys.argv[1], sys.argv[2]
    table = pa.table({"x": list(range(1000)), "y": [float(i) / 7 for i in range(1000)]})
    if mode == "file-stall":
        def stalled_commit(*args):
            print("written, not committed", flush=True)
            time.sleep(600)
        storage._commit = stalled_commit
        storage.write_parquet(table, uri)
    elif mode == "file":
        storage.write_parquet(table, uri)
    print("done", flush=True)
""")


def start_writer(mode: str, uri: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", STALLED_WRITER, mode, uri],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})


def kill_when_stalled(process: subprocess.Popen[str]) -> None:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.strip() == "written, not committed", process.stderr.read() if \
        process.stderr else line
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


def finish_writer(mode: str, uri: str, env: dict[str, str]) -> None:
    process = start_writer(mode, uri, env)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0 and "done" in out, err


@pytest.fixture(params=["local", "gs", "s3"])
def crash_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, dict]]:
    """(a base URI, the environment that reaches it) on each kind of store."""
    if request.param == "local":
        yield str(tmp_path / "crash"), {}
        return
    server = request.getfixturevalue("servers")[request.param]
    env = server.environment(server.url)
    with environment(env):
        yield f"{request.param}://{OUT_BUCKET}/crash-{uuid.uuid4().hex[:8]}", env


def test_writer_killed_before_commit_leaves_no_artifact(crash_target: tuple[str, dict]) -> None:
    base, env = crash_target
    uri = storage.join(base, "labels.parquet")
    kill_when_stalled(start_writer("file-stall", uri, env))

    assert not storage.exists(uri)
    with pytest.raises(storage.MissingObjectError, match="labels.parquet"):
        storage.read_parquet(uri)
    visible = [Path(f.relative).name for f in listing.list_files(base, (".parquet",))]
    assert visible == []  # the written bytes sit only under a hidden temporary name

    finish_writer("file", uri, env)  # the rerun
    assert storage.is_file(uri)
    assert storage.read_parquet(uri).num_rows == 1000
    assert listing.remove_temporaries(base) == 1  # the killed writer's leftover
    assert listing.remove_temporaries(base) == 0


@pytest.mark.slow
def test_random_kills_never_expose_a_partial_object(servers: dict) -> None:
    """Writers of 4 MB objects killed at random moments: the name holds a complete object
    (its embedded checksum verifies) or nothing."""
    server = servers["gs"]
    env = server.environment(server.url)
    uri = f"gs://{OUT_BUCKET}/random-kills/blob.bin"
    script = textwrap.dedent("""
        import hashlib, os, sys
        from goggles.io import storage
        for _ in range(1000):
            body = os.urandom(4 << 20)
            storage.write_bytes(sys.argv[1], hashlib.sha256(body).digest() + body)
            print("committed", flush=True)
    """)
    rng = np.random.default_rng(7)
    seen_complete = 0
    with environment(env):
        for _ in range(6):
            process = subprocess.Popen([sys.executable, "-c", script, uri],
                                       stdout=subprocess.DEVNULL, env={**os.environ, **env})
            time.sleep(float(rng.uniform(1.5, 4.0)))  # imports take ~1 s, a write ~0.1 s
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            if storage.exists(uri):
                data = storage.read_bytes(uri)
                assert len(data) == 32 + (4 << 20)
                import hashlib

                assert hashlib.sha256(data[32:]).digest() == data[:32]
                seen_complete += 1
    assert seen_complete >= 1


# -- one writer per output: the lock on gs:// and s3:// ------------------------------------------

class PreconditionStrippingProxy(FaultyProxy):
    """A store that ignores conditional writes, as some S3-compatible servers do: the proxy
    drops ``If-None-Match``/``If-Match`` headers and ``ifGenerationMatch`` query parameters on
    the way to the real server, and fails nothing."""

    def __init__(self, upstream: str):
        super().__init__(upstream, fail_rate=0.0)

    async def _handle(self, request: Any) -> Any:
        query = [(k, v) for k, v in request.rel_url.query.items() if k != "ifGenerationMatch"]
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in ("if-none-match", "if-match")}
        return await super()._handle(request.clone(headers=headers,
                                                   rel_url=request.rel_url.with_query(query)))


@pytest.fixture(params=["gs", "s3"])
def bucket_output(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, str]]]:
    """(a fresh output URI in the output bucket, the environment that reaches its server), with
    that environment set in this process too."""
    server = request.getfixturevalue("servers")[request.param]
    env = server.environment(server.url)
    with environment(env):
        yield f"{request.param}://{OUT_BUCKET}/locked-{uuid.uuid4().hex[:8]}", env


def test_two_runs_racing_for_one_bucket_output(bucket_output: tuple[str, dict]) -> None:
    """The issue's case on a bucket: K=2 and K=3 started together into one OUT. Exactly one
    takes the lock; the other fails while the first still holds it, naming it."""
    output, env = bucket_output
    winner, losers = race(output, ["K=2", "K=3"], env)
    (_, text), = losers
    holder = read_holder(output)
    assert holder is not None and holder.pid == winner.pid
    assert f"output {output!r} is locked by another goggles run" in text
    assert f"pid {winner.pid} on host {socket.gethostname()}" in text
    assert f"note: {holder.note}" in text and holder.started_at in text
    assert f"remove {lock_uri(output)} (or run with --break-lock)" in text
    finish(winner)
    assert not storage.exists(lock_uri(output))


def test_four_runs_racing_for_one_bucket_output(bucket_output: tuple[str, dict]) -> None:
    output, env = bucket_output
    winner, losers = race(output, [f"racer-{i}" for i in range(4)], env)
    assert len(losers) == 3 and all(f"pid {winner.pid} " in text for _, text in losers)
    finish(winner)


def test_bucket_lock_holder_release_and_break(bucket_output: tuple[str, dict],
                                              caplog: pytest.LogCaptureFixture) -> None:
    output, _ = bucket_output
    caplog.set_level("WARNING", logger="goggles.io.lock")
    with output_lock(output, owner_note="first run") as first:
        assert storage.read_json(lock_uri(output))["note"] == "first run"
        with pytest.raises(LockHeld, match="note: first run") as caught:
            output_lock(output).acquire()
        assert caught.value.holder == first.holder and "\n" not in str(caught.value)
        with pytest.raises(LockHeld, match="still running"):  # a live holder is never broken
            break_lock(output)
        storage.remove(lock_uri(output))  # broken by hand, as if its run had died
        with output_lock(output, owner_note="second run") as second:
            first.release()  # the broken run finishing must leave the second run's lock
            assert read_holder(output) == second.holder
        assert "now belongs to" in caplog.text
    assert not storage.exists(lock_uri(output))
    assert break_lock(output) is None
    fs, path = storage.filesystem(output)
    assert [p for p in fs.find(path)] == []  # no temporaries, no lock


def test_stale_bucket_lock_from_this_machine_is_broken(bucket_output: tuple[str, dict],
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """The lock of a run killed on this machine: its version is read with its body and the
    removal is conditional on it, then the new run takes the lock."""
    output, _ = bucket_output
    if not this_machine().boot_id:
        pytest.skip("no /proc here: a dead holder cannot be recognised for sure")
    caplog.set_level("WARNING", logger="goggles.io.lock")
    stale = this_machine(pid=dead_pid())
    plant(output, stale)
    with output_lock(output) as lock:
        assert read_holder(output) == lock.holder
    assert f"breaking the stale lock {lock_uri(output)}" in caplog.text


def test_bucket_lock_from_another_host_is_not_broken(bucket_output: tuple[str, dict]) -> None:
    output, _ = bucket_output
    other = this_machine(host="another-host")
    plant(output, other)
    with pytest.raises(LockHeld, match="pid .* on host another-host"):
        output_lock(output).acquire()
    assert read_holder(output) == other
    assert break_lock(output) == other


@pytest.mark.parametrize("protocol", [
    pytest.param("gs", marks=pytest.mark.xfail(
        strict=True, reason="fake-gcs-server ignores ifGenerationMatch (and generation) on "
                            "DELETE; GCS honours it")),
    "s3",
])
def test_removal_is_conditional_on_the_version_read(protocol: str, servers: dict) -> None:
    """A lock read, then replaced by another run's, is not deleted by a remover holding the
    old version (GCS: ifGenerationMatch; S3: If-Match with the ETag)."""
    server = servers[protocol]
    output = f"{protocol}://{OUT_BUCKET}/conditional-{uuid.uuid4().hex[:8]}"
    with environment(server.environment(server.url)):
        store = lock_module._store(lock_uri(output))
        with output_lock(output):
            old = store.read()
        assert old is not None
        with output_lock(output) as newer:
            assert store.delete(old[1]) == "changed"
            assert read_holder(output) == newer.holder


@pytest.mark.parametrize("protocol", ["gs", "s3"])
def test_a_store_that_ignores_conditional_creates_cannot_be_locked(protocol: str,
                                                                   servers: dict) -> None:
    """Through a proxy that strips the preconditions, the second create of the lock succeeds:
    the lock refuses the store (and removes what it wrote) instead of promising exclusion."""
    server = servers[protocol]
    output = f"{protocol}://{OUT_BUCKET}/unconditional-{uuid.uuid4().hex[:8]}"
    with PreconditionStrippingProxy(server.url) as proxy, \
            environment(server.environment(proxy.url)):
        with pytest.raises(LockUnsupported, match="ignoring the precondition"):
            output_lock(output).acquire()
        assert not storage.exists(lock_uri(output))
    assert proxy.counts["requests"] >= 2  # the creates went through the stripping proxy


@pytest.mark.slow
def test_two_goggles_runs_into_one_bucket_output(bucket_output: tuple[str, dict],
                                                 tmp_path: Path) -> None:
    """Two whole `goggles run` (K=2, K=3) started together into one bucket OUT: one runs, the
    other fails at once naming the lock; OUT holds the first run's labels, metrics and report."""
    from tests.integration.test_concurrent_runs import (
        check_one_consistent_run,
        race,
        small_source,
    )

    output, env = bucket_output
    finished = race(str(small_source(tmp_path / "in")), output, {**os.environ, **env})
    check_one_consistent_run(finished, lambda name: storage.read_bytes(f"{output}/{name}"))
    assert not storage.exists(lock_uri(output))


# -- exports into buckets -------------------------------------------------------------------------

def download(prefix: str, into: Path) -> Path:
    """Every object under ``prefix``, into a local folder of the same layout."""
    for name in listing.list_folder(prefix):
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(storage.read_bytes(f"{prefix}/{name}"))
    return into


def bucket_run(output: str, tmp_path: Path) -> tuple[str, dict[str, dict[str, Any]]]:
    """The synthetic run of tests/unit/test_export.py with its images and OUT in the bucket;
    returns (OUT, bucket uri -> labels row)."""
    from goggles.io.artifacts import output_paths
    from tests.unit.test_export import make_run

    local_out, source = make_run(tmp_path)
    labels = storage.read_parquet(output_paths(local_out)["labels"])
    images = f"{output}/images"
    uris = [f"{images}/{Path(uri).relative_to(source).as_posix()}"
            for uri in labels["uri"].to_pylist()]
    for local, remote in zip(labels["uri"].to_pylist(), uris, strict=True):
        storage.write_bytes(remote, Path(local).read_bytes())
    labels = labels.set_column(labels.schema.get_field_index("uri"), "uri", pa.array(uris))
    out = f"{output}/run"
    storage.write_parquet(labels, f"{out}/labels.parquet")
    storage.write_json({"method": "graph-em", "source_uri": images}, f"{out}/metrics.json")
    return out, {row["uri"]: row for row in labels.to_pylist()}


def assert_image_folder(tree: Path, rows: dict[str, dict[str, Any]],
                        origin: dict[str, str]) -> None:
    """torchvision's ImageFolder over ``tree`` gives each image the class labels.parquet
    gives it; ``origin`` maps a file's bytes back to its source URI."""
    from torchvision.datasets import ImageFolder

    dataset = ImageFolder(str(tree))
    assert len(dataset) == len(rows)
    for path, target in dataset.samples:
        uri = origin[Path(path).read_bytes().hex()]
        assert dataset.classes[target] == rows[uri]["label_name"]


def test_export_of_a_local_run_into_a_bucket(bucket_output: tuple[str, dict],
                                             tmp_path: Path) -> None:
    """Local images and OUT, DEST in the bucket: copies (no links), read back from it."""
    from goggles.export import export_labels
    from tests.unit.test_export import make_run, read_labels

    output, _ = bucket_output
    out, _ = make_run(tmp_path)
    rows = read_labels(out)
    dest = f"{output}/tree"
    summary = export_labels(out, dest, "imagefolder")
    assert not summary.linked and summary.written == len(rows)
    names = listing.list_folder(dest)
    assert "export.json" in names and not [n for n in names if storage.TEMPORARY_TAG in n]
    origin = {Path(uri).read_bytes().hex(): uri for uri in rows}
    assert_image_folder(download(dest, tmp_path / "copy"), rows, origin)


def test_exports_within_a_bucket_are_read_back(bucket_output: tuple[str, dict],
                                               tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Images, OUT and DEST in one store (server-side copies): ImageFolder, datasets'
    imagefolder, Label Studio tasks naming the bucket URIs, CSV; a second export into a DEST
    that is not empty is refused and leaves it as it was."""
    from goggles.config import ConfigError
    from goggles.export import export_labels

    output, _ = bucket_output
    out, rows = bucket_run(output, tmp_path)
    origin = {storage.read_bytes(uri).hex(): uri for uri in rows}

    read = storage.read_bytes

    def labels_only(uri: str) -> bytes:
        assert uri not in rows, f"{uri} passed through this process"
        return read(uri)

    with monkeypatch.context() as patch:  # one store: the server copies the images
        patch.setattr(storage, "read_bytes", labels_only)
        export_labels(out, f"{output}/tree", "imagefolder")
    assert_image_folder(download(f"{output}/tree", tmp_path / "tree"), rows, origin)

    export_labels(out, f"{output}/hf", "huggingface", min_confidence=0.5)
    hf = download(f"{output}/hf", tmp_path / "hf")
    datasets = pytest.importorskip("datasets")
    train = datasets.load_dataset("imagefolder", data_dir=str(hf),
                                  cache_dir=str(tmp_path / "cache"))["train"]
    assert sorted(train["uri"]) == sorted(u for u, r in rows.items() if r["confidence"] >= 0.5)
    for item in train:
        assert item["label"] == rows[item["uri"]]["label_name"]
        assert item["image"].size == (8, 6)

    export_labels(out, f"{output}/ls", "label-studio")
    tasks = json.loads(storage.read_bytes(f"{output}/ls/tasks.json"))
    assert {t["data"]["image"] for t in tasks} == set(rows)  # bucket URIs, for LS to resolve
    for task in tasks:
        result = task["predictions"][0]["result"][0]
        assert result["value"]["choices"] == [rows[task["data"]["image"]]["label_name"]]

    export_labels(out, f"{output}/csv", "csv")
    table = storage.read_bytes(f"{output}/csv/labels.csv").decode().splitlines()
    assert len(table) == len(rows) + 1

    before = listing.list_folder(f"{output}/csv")
    with pytest.raises(ConfigError, match="is not empty"):
        export_labels(out, f"{output}/csv", "jsonl")
    with pytest.raises(ConfigError, match="is the run's output or holds it"):
        export_labels(out, output, "jsonl")
    assert listing.list_folder(f"{output}/csv") == before
