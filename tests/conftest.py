"""Shared helpers and fixtures: the real cub-dev images (read in place, never copied), small
and hostile source folders, a guard against hangs, and a reference affinity."""

from __future__ import annotations

import io
import os
import signal
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
"""The repository's root."""
CUB_DEV = Path(os.environ.get("GOGGLES_CUB_DEV", ROOT.parent / "shared" / "data" / "cub-dev"))


def cub_task(tmp_path: Path, *species_prefixes: str, limit: int | None = None) -> Path:
    """A source folder of symlinks to cub-dev species (ImageFolder layout), in ``tmp_path``.

    Skips the test when cub-dev is absent."""
    if not CUB_DEV.is_dir():
        pytest.skip(f"cub-dev not found at {CUB_DEV} (put ../shared beside the repository or "
                    "set GOGGLES_CUB_DEV)")
    source = tmp_path / "source"
    for prefix in species_prefixes:
        matches = sorted(p for p in CUB_DEV.iterdir() if p.name.startswith(prefix + "."))
        if not matches:
            pytest.skip(f"species {prefix} not in {CUB_DEV}")
        folder = source / matches[0].name
        folder.mkdir(parents=True)
        for image in sorted(matches[0].iterdir())[:limit]:
            (folder / image.name).symlink_to(image)
    return source


@pytest.fixture
def cub_pair(tmp_path: Path) -> Path:
    """Two well-separated species: Black-footed Albatross and Indigo Bunting (~120 images)."""
    return cub_task(tmp_path, "001", "014")


def dense_affinity(maps: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """The affinity matrix straight from its definition (paper eqs. 4-5), vectorised in float64
    and independent of goggles: unit position vectors against unit prototypes, max over
    positions; a zero vector has cosine 0 with everything. [n, C, H, W], [M, C] -> [n, M]."""
    n, c, h, w = maps.shape
    vectors = maps.astype(np.float64).reshape(n, c, h * w).transpose(0, 2, 1)  # [n, HW, C]
    norms = np.linalg.norm(vectors, axis=2, keepdims=True)
    units = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    protos = prototypes.astype(np.float64)
    lengths = np.linalg.norm(protos, axis=1, keepdims=True)
    protos = np.divide(protos, lengths, out=np.zeros_like(protos), where=lengths > 0)
    return (units @ protos.T).max(axis=1)  # type: ignore[no-any-return]


# -- a guard against hangs -------------------------------------------------------------------------

def alarm_fixture(seconds: int, what: str) -> Callable[[], Iterator[None]]:
    """A fixture named ``alarm`` that fails the test with ``TimeoutError(what)`` instead of
    letting it hang past ``seconds`` (a FIFO or an endless device read blocks forever).
    Use: ``alarm = alarm_fixture(60, "ingest hung on a hostile file")`` in a test module."""
    @pytest.fixture(name="alarm")
    def alarm() -> Iterator[None]:
        """Fail with TimeoutError instead of hanging (SIGALRM)."""
        def hung(signum: int, frame: object) -> None:
            raise TimeoutError(what)
        previous = signal.signal(signal.SIGALRM, hung)
        signal.alarm(seconds)
        try:
            yield
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
    return alarm  # type: ignore[no-any-return]


# -- source folders ------------------------------------------------------------------------------

def small_source(root: Path, n_good: int = 3, *, size: int = 16, bad: bool = True) -> Path:
    """``n_good`` random-noise PNGs (``size`` pixels square) alternating between the class
    folders ``b`` and ``a`` under ``root``, and with ``bad`` one file that ingest must reject
    (``a/broken.jpg``). Returns ``root``."""
    rng = np.random.default_rng(0)
    for index in range(n_good):
        folder = root / ("a" if index % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        (folder / f"{index}.png").write_bytes(encode(Image.fromarray(pixels), "PNG"))
    if bad:
        (root / "a").mkdir(parents=True, exist_ok=True)
        (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    return root


# -- hostile files: every one is accepted as RGB or rejected with its reason ---------------------

RED, BLUE = (255, 0, 0), (0, 0, 255)


@dataclass(frozen=True)
class Expect:
    """What ingest must make of a file: ``status`` and a substring of ``error`` (rejections)
    or the decoded ``size`` (acceptances)."""

    status: str
    reason: str = ""
    size: tuple[int, int] | None = None


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_claiming(width: int, height: int) -> bytes:
    """A small, valid-looking PNG whose IHDR claims ``width`` x ``height`` RGB pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def tiff_claiming_rows(rows: int) -> bytes:
    """A 6x5 float TIFF (one strip) whose ImageLength tag is rewritten to ``rows``: a few hundred
    bytes declaring millions of pixels (found by the fuzz test; Pillow fills the rest with 0)."""
    data = bytearray(encode(Image.fromarray(np.ones((5, 6), np.float32)), "TIFF"))
    assert data[:4] == b"II*\x00"
    ifd = struct.unpack_from("<I", data, 4)[0]
    for entry in range(struct.unpack_from("<H", data, ifd)[0]):
        at = ifd + 2 + 12 * entry
        if struct.unpack_from("<H", data, at)[0] == 257:  # ImageLength
            struct.pack_into("<HHII", data, at, 257, 4, 1, rows)  # LONG, count 1
            return bytes(data)
    raise AssertionError("no ImageLength tag")


def corner_marked(width: int = 60, height: int = 40) -> Image.Image:
    """Blue, with a red 10x10 block in the top-left corner (to follow rotations)."""
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, 10, 10))
    return image


def exif_rotated_jpeg() -> bytes:
    """A 60x40 JPEG with EXIF Orientation=6: shown upright it is 40x60, red block top-right."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(corner_marked(), "JPEG", quality=95, exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (16, 12), colour) for colour in (RED, BLUE, (0, 255, 0))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def transparent_palette_png() -> bytes:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, 4, 8))  # left half red, right half index 0 (transparent)
    return encode(image, "PNG", transparency=0)


def hostile_blobs() -> dict[str, tuple[bytes, Expect]]:
    """File name -> (bytes, expectation) for every hostile content the tests generate."""
    jpeg = encode(noise(64, 48), "JPEG", quality=90)
    eps = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"
           b"(pwned) print flush showpage\n%%EOF\n")
    return {
        "truncated.jpg": (jpeg[: len(jpeg) // 2], Expect("rejected", "truncated image")),
        "empty.jpg": (b"", Expect("rejected", "empty file (0 bytes)")),
        "random.jpg": (np.random.default_rng(1).bytes(4096), Expect("rejected", "not an image")),
        "random.png": (np.random.default_rng(2).bytes(300), Expect("rejected", "not an image")),
        "page.jpg": (b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>",
                     Expect("rejected", "not an image")),
        "text.jpg": (b"just some text, named like a photo\n", Expect("rejected", "not an image")),
        "postscript.jpg": (eps, Expect("rejected", "not an image")),
        "png_then_garbage.png": (b"\x89PNG\r\n\x1a\n" + np.random.default_rng(3).bytes(200),
                                 Expect("rejected", "")),
        "bomb_40000x40000.png": (png_claiming(40_000, 40_000),
                                 Expect("rejected", "decompression bomb")),
        "over_max_pixels.png": (png_claiming(10_000, 7_000),
                                Expect("rejected", "exceeds max_pixels=64000000")),
        "tiff_claiming_rows.tif": (tiff_claiming_rows(8_912_901),
                                   Expect("rejected", "covers 30 of the 6x8912901 pixels")),
        "one_pixel.png": (encode(Image.new("RGB", (1, 1), RED), "PNG"),
                          Expect("accepted", size=(1, 1))),
        "one_pixel.jpg": (encode(Image.new("L", (1, 1), 128), "JPEG"),
                          Expect("accepted", size=(1, 1))),
        "cmyk.jpg": (encode(Image.new("RGB", (32, 24), RED).convert("CMYK"), "JPEG", quality=95),
                     Expect("accepted", size=(32, 24))),
        "grayscale.png": (encode(noise(30, 20).convert("L"), "PNG"),
                          Expect("accepted", size=(30, 20))),
        "sixteen_bit.png": (encode(Image.fromarray(
            np.linspace(0, 65535, 30 * 20).reshape(20, 30).astype(np.uint16)), "PNG"),
            Expect("accepted", size=(30, 20))),
        "palette.png": (encode(noise(30, 20).convert("P"), "PNG"),
                        Expect("accepted", size=(30, 20))),
        "palette_transparent.png": (transparent_palette_png(), Expect("accepted", size=(8, 8))),
        "rgba.png": (encode(noise(30, 20).convert("RGBA"), "PNG"),
                     Expect("accepted", size=(30, 20))),
        "animated.gif": (animated_gif(), Expect("accepted", size=(16, 12))),
        "exif_rotated.jpg": (exif_rotated_jpeg(), Expect("accepted", size=(40, 60))),
        "float_nan.tif": (encode(Image.fromarray(
            np.array([[np.nan, 0.0], [np.inf, 1.0]], np.float32)), "TIFF"),
            Expect("accepted", size=(2, 2))),
    }


NON_UTF8 = b"caf\xe9-\xff.png"
SHELL_NAME = "with space $(touch pwned) ; & | `touch pwned2` 'q' \"dq\" * ? [x] #.png"
LONG_NAME = "l" * 251 + ".png"  # 255 bytes, the usual file-name limit


def make_hostile_tree(root: Path, *, classes: tuple[str, str] = ("class_a", "class_b"),
                      ) -> dict[str, Expect]:
    """Write every hostile file and filesystem oddity under ``root/<class>/`` and return
    relative path -> expectation for each file ingest lists (folder names as labels)."""
    first, second = classes
    expected: dict[str, Expect] = {}
    for index, (name, (data, expect)) in enumerate(sorted(hostile_blobs().items())):
        relative = f"{(first, second)[index % 2]}/{name}"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
        expected[relative] = expect

    good = encode(noise(48, 32, seed=7), "PNG")
    for relative in (f"{first}/duplicate_1.png", f"{first}/duplicate_2.png",
                     f"{second}/{LONG_NAME}", f"{second}/{SHELL_NAME}",
                     f"{first}/nested/deeper/still.png"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(good)
        expected[relative] = Expect("accepted", size=(48, 32))
    (root / second / "a::b.png").write_bytes(good)
    expected[f"{second}/a::b.png"] = Expect("rejected", "URL-chaining")
    os.makedirs(os.fsencode(root / second), exist_ok=True)
    with open(os.path.join(os.fsencode(root / second), NON_UTF8), "wb") as handle:
        handle.write(good)
    expected[f"{second}/" + NON_UTF8.decode("utf-8", "surrogateescape")] = \
        Expect("rejected", "not valid UTF-8")

    (root / first / "loop").symlink_to(root, target_is_directory=True)  # a folder loop
    (root / first / "self_loop.jpg").symlink_to(root / first / "self_loop.jpg")
    expected[f"{first}/self_loop.jpg"] = Expect("rejected", "symlink loop")
    (root / first / "dangling.jpg").symlink_to(root / "does-not-exist.jpg")
    expected[f"{first}/dangling.jpg"] = Expect("rejected", "vanished")
    os.mkfifo(root / second / "fifo.jpg")
    expected[f"{second}/fifo.jpg"] = Expect("rejected", "not a regular file")
    if os.path.exists("/dev/zero"):
        (root / second / "endless.jpg").symlink_to("/dev/zero")
        expected[f"{second}/endless.jpg"] = Expect("rejected", "not a regular file")
    (root / second / "folder.jpg").mkdir()  # a folder with an image suffix is not a file
    (root / second / "folder.jpg" / "inside.png").write_bytes(good)
    expected[f"{second}/folder.jpg/inside.png"] = Expect("accepted", size=(48, 32))
    (root / first / "notes.txt").write_text("not listed: no image suffix")
    return expected


class RecordingClient:
    """Stands in for kfp.Client, as no KFP server can run here: records each call (what
    ``goggles submit/schedule`` hand the server, the package read while it still exists) and
    answers with ids like the server's. Everything before that call is the real code."""

    instances: list[RecordingClient] = []

    def __init__(self, host: str | None = None, namespace: str = "kubeflow", **kwargs: Any):
        self.host, self.namespace, self.kwargs = host, namespace, kwargs
        self.calls: list[tuple[str, dict[str, Any]]] = []
        RecordingClient.instances.append(self)

    @staticmethod
    def _package(path: str) -> dict[str, Any]:
        with open(path, encoding="utf-8") as handle:
            return {"path": path, "spec": next(iter(yaml.safe_load_all(handle)))}

    def create_run_from_pipeline_package(self, pipeline_file: str, arguments: dict[str, Any],
                                         run_name: str | None = None,
                                         experiment_name: str | None = None,
                                         **kwargs: Any) -> SimpleNamespace:
        self.calls.append(("run", {"package": self._package(pipeline_file),
                                   "arguments": arguments, "run_name": run_name,
                                   "experiment_name": experiment_name, **kwargs}))
        return SimpleNamespace(run_id="run-123")

    def create_experiment(self, name: str, description: str | None = None,
                          namespace: str | None = None) -> SimpleNamespace:
        self.calls.append(("experiment", {"name": name}))
        return SimpleNamespace(experiment_id=f"exp-{name}")

    def create_recurring_run(self, experiment_id: str, job_name: str, **kwargs: Any,
                             ) -> SimpleNamespace:
        package = self._package(kwargs.pop("pipeline_package_path"))
        self.calls.append(("recurring", {"experiment_id": experiment_id, "job_name": job_name,
                                         "package": package, **kwargs}))
        return SimpleNamespace(recurring_run_id="rr-456")


@pytest.fixture
def kfp_client(monkeypatch: pytest.MonkeyPatch) -> type[RecordingClient]:
    """kfp.Client replaced by :class:`RecordingClient` (its instances start empty)."""
    import kfp

    RecordingClient.instances = []
    monkeypatch.setattr(kfp, "Client", RecordingClient)
    return RecordingClient



@dataclass
class Request:
    """One HTTP request the :class:`KfpServer` received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body or b"{}")

    def package(self) -> dict[str, Any]:
        """The pipeline spec of a multipart upload (the ``uploadfile`` part)."""
        import email.parser

        message = email.parser.BytesParser().parsebytes(
            b"Content-Type: " + self.headers["content-type"].encode() + b"\r\n\r\n" + self.body)
        for part in message.walk():
            if part.get_param("name", header="content-disposition") == "uploadfile":
                return next(iter(yaml.safe_load_all(part.get_payload(decode=True))))
        raise AssertionError("no uploadfile part in the upload")


class KfpServer:
    """A Kubeflow Pipelines API (v2beta1) on 127.0.0.1 that records every request and answers
    as KFP's server does for the calls goggles makes: healthz, experiments, runs, recurring
    runs, pipelines, their versions and uploads. The real :class:`kfp.Client` talks to it."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.requests: list[Request] = []
        self.pipelines: dict[str, str] = {}  # display name -> id
        self.versions: dict[str, list[tuple[str, str]]] = {}  # pipeline id -> (name, id)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                from urllib.parse import parse_qs, urlsplit

                length = int(self.headers.get("content-length") or 0)
                url = urlsplit(self.path)
                request = Request(self.command, url.path, parse_qs(url.query),
                                  {k.lower(): v for k, v in self.headers.items()},
                                  self.rfile.read(length))
                server.requests.append(request)
                status, answer = server.answer(request)
                import json

                body = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = _handle

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def calls(self, method: str, path: str) -> list[Request]:
        """The requests of ``method`` to ``path`` (exactly), in order."""
        return [r for r in self.requests if r.method == method and r.path == path]

    def answer(self, request: Request) -> tuple[int, Any]:
        import json

        api = "/apis/v2beta1"
        path, method = request.path, request.method
        if path == f"{api}/healthz":
            return 200, {"multi_user": False}
        if path == f"{api}/experiments" and method == "GET":
            return 200, {}
        if path == f"{api}/experiments" and method == "POST":
            name = request.json()["display_name"]
            return 200, {"experiment_id": f"exp-{name}", "display_name": name}
        if path == f"{api}/runs" and method == "POST":
            return 200, {"run_id": "run-123", "display_name": request.json()["display_name"]}
        if path == f"{api}/recurringruns" and method == "POST":
            return 200, {"recurring_run_id": "rr-456"}
        if path == f"{api}/pipelines" and method == "GET":
            predicate = (json.loads(request.query["filter"][0])["predicates"][0]
                         if "filter" in request.query else {})
            wanted = predicate.get("stringValue", predicate.get("string_value"))
            found = [{"pipeline_id": pid, "display_name": name}
                     for name, pid in self.pipelines.items() if wanted in (None, name)]
            return 200, {"pipelines": found, "total_size": len(found)} if found else {}
        if path == f"{api}/pipelines/upload":
            name = request.query["name"][0]
            pid = self.pipelines.setdefault(name, f"pl-{len(self.pipelines) + 1}")
            self.versions.setdefault(pid, []).append((name, f"pv-{pid}-1"))
            return 200, {"pipeline_id": pid, "display_name": name}
        if path == f"{api}/pipelines/upload_version":
            pid, name = request.query["pipelineid"][0], request.query["name"][0]
            if any(n == name for n, _ in self.versions.get(pid, [])):
                return 409, {"error": f"version {name} exists", "code": 6}
            vid = f"pv-{pid}-{len(self.versions.setdefault(pid, [])) + 1}"
            self.versions[pid].append((name, vid))
            return 200, {"pipeline_id": pid, "pipeline_version_id": vid, "display_name": name}
        if path.startswith(f"{api}/pipelines/") and path.endswith("/versions"):
            pid = path.split("/")[-2]
            found = [{"pipeline_id": pid, "pipeline_version_id": vid, "display_name": name}
                     for name, vid in self.versions.get(pid, [])]
            return 200, {"pipeline_versions": found, "total_size": len(found)}
        return 404, {"error": f"not found: {method} {path}", "code": 5}


@pytest.fixture
def kfp_server() -> Iterator[KfpServer]:
    """A recording KFP API server on 127.0.0.1 (:class:`KfpServer`), closed after the test."""
    server = KfpServer()
    try:
        yield server
    finally:
        server.close()
