"""Only the allowed protocols are opened, and no URI that chains filesystems, carries credentials
or a signed query string is: refused before any request leaves the process, and never echoed
with its secret."""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from goggles.cli import main
from goggles.io import listing, storage, uris

SECRET = "s3cr3t-Pl4nted"


class _Recorder(socketserver.BaseRequestHandler):
    connections: list[str] = []

    def handle(self) -> None:
        _Recorder.connections.append(str(self.client_address))
        self.request.close()


@pytest.fixture
def loopback() -> Iterator[tuple[str, list[str]]]:
    """A TCP server on 127.0.0.1 that records every connection made to it."""
    _Recorder.connections = []
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", _Recorder.connections
    finally:
        server.shutdown()
        server.server_close()


def refused_uris(host: str) -> list[str]:
    return [f"http://{host}/images", f"https://{host}/images", f"ftp://{host}/images",
            f"ftp://user:{SECRET}@{host}/images", f"simplecache::http://{host}/images",
            f"simplecache::s3://AKIA:{SECRET}@bucket/images",
            "blockcache::gs://bucket/images", f"gs://user:{SECRET}@bucket/images",
            f"s3://bucket/images?X-Amz-Signature={SECRET}&X-Amz-Credential=AKIA",
            f"gs://bucket/images#{SECRET}", f"memory://x:{SECRET}@bucket/images",
            f"gs:///user:{SECRET}@bucket/images", f"s3:////AKIA:{SECRET}@bucket/images"]


def test_refusal_names_the_reason() -> None:
    for uri in ("/data/images", "images", "file:///data/images", "memory://bucket/a",
                "gs://bucket/a", "gcs://bucket/a", "s3://bucket/a", "s3a://bucket/a",
                "/data/what?not#that"):  # a local name may hold ? and #
        assert uris.refusal(uri) is None, uri
    assert "protocol is not accepted" in str(uris.refusal("http://example.com/a"))
    assert "URL chaining" in str(uris.refusal("simplecache::gs://bucket/a"))
    assert "URL chaining" in str(uris.refusal("/data/a::b"))
    assert "credentials" in str(uris.refusal("s3://k:s@bucket/a"))
    assert "query string" in str(uris.refusal("gs://bucket/a?X-Goog-Signature=x"))


def test_another_protocol_is_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    assert uris.refusal("az://container/a") is not None
    monkeypatch.setenv(uris.ALLOW_PROTOCOLS_ENV, "az, abfs")
    assert uris.refusal("az://container/a") is None
    assert uris.refusal("az://user:key@container/a") is not None  # credentials still refused


def test_redact_and_scrub_remove_every_secret(loopback: tuple[str, list[str]]) -> None:
    host, _ = loopback
    for uri in refused_uris(host):
        assert SECRET not in uris.redact(uri), uri
    text = ("cannot read simplecache::s3://AKIA:" + SECRET + "@bucket/x (botocore: "
            "https://bucket.s3.amazonaws.com/x?X-Amz-Signature=" + SECRET + ") and "
            "ftp://u:" + SECRET + "@host/y")
    scrubbed = uris.scrub(text)
    assert SECRET not in scrubbed
    assert "s3://bucket/x" in scrubbed and "ftp://host/y" in scrubbed


def test_storage_refuses_before_any_request(loopback: tuple[str, list[str]]) -> None:
    host, connections = loopback
    for uri in refused_uris(host):
        for call in (storage.read_bytes, storage.exists, storage.size,
                     lambda u: storage.write_bytes(u, b"x"),
                     lambda u: listing.list_files(u, (".jpg",))):
            with pytest.raises(storage.StorageError) as raised:
                call(uri)
            assert SECRET not in str(raised.value), uri
    assert connections == []


@pytest.mark.parametrize("option", ["SOURCE", "--output", "--weights", "--dev-labels"])
def test_the_command_refuses_every_uri_option_before_any_request(
        option: str, tmp_path: Path, loopback: tuple[str, list[str]],
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    host, connections = loopback
    (tmp_path / "images" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a" / "x.png")
    for uri in refused_uris(host):
        arguments = {"SOURCE": str(tmp_path / "images"), "--output": str(tmp_path / "out")}
        arguments[option] = uri
        argv = ["run", arguments.pop("SOURCE"), "--num-classes", "2", "--runner", "local"]
        for flag, value in arguments.items():
            argv += [flag, value]
        assert main(argv) == 2, uri
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "goggles: error:" in err, err
        assert SECRET not in err and SECRET not in caplog.text, err
    assert connections == []
    assert not (tmp_path / "out").exists()


def test_the_cluster_client_refuses_before_contacting_anything(
        tmp_path: Path, loopback: tuple[str, list[str]],
        capsys: pytest.CaptureFixture[str]) -> None:
    host, connections = loopback
    for uri in refused_uris(host):
        code = main(["submit", "--host", f"http://{host}", f"source_uri={uri}",
                     "num_classes=2"])
        err = capsys.readouterr().err
        assert code == 2 and "not accepted" in err and SECRET not in err, err
        code = main(["submit", "--host", f"http://{host}", "source_uri=gs://bucket/images",
                     f"dev_labels_uri={uri}", "num_classes=2"])
        assert code == 2 and SECRET not in capsys.readouterr().err
    assert connections == []


def test_metrics_record_the_source_redacted() -> None:
    from goggles.pipeline.wiring import run_record

    record = run_record({"backbone": "vgg16", "seed": 0, "top_k": 5, "num_shards": 1,
                         "source_uri": "gs://bucket/images"}, runner="kfp",
                        weights_source=f"s3://bucket/w.pth?X-Amz-Signature={SECRET}",
                        num_prototypes=3)
    assert SECRET not in json.dumps(record)


def test_credentials_after_extra_slashes_are_refused_and_redacted() -> None:
    for uri in (f"gs:///user:{SECRET}@bucket/a", f"s3:////k:{SECRET}@bucket/a",
                f"file://u:{SECRET}@host/a"):
        assert "credentials" in str(uris.refusal(uri)), uri
        assert SECRET not in uris.redact(uri) and SECRET not in uris.scrub(f"read {uri} x")
    assert uris.refusal("gs://bucket/a@2x.png") is None  # an '@' in an object name is fine
    assert uris.refusal("file:///data/me@home/a") is None


def test_file_localhost_is_the_local_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert uris.local_path("file://localhost/data/images") == "/data/images"
    assert uris.local_path("file:///data/images") == "/data/images"
    assert uris.local_path("file://localhost") == "/"
    assert uris.local_path("file://images") == "images"  # relative, as before
    (tmp_path / "x.txt").write_text("x")
    assert storage.read_bytes(f"file://localhost{tmp_path}/x.txt") == b"x"
    assert uris.absolute(f"file://localhost{tmp_path}/out") == f"{tmp_path}/out"
    assert uris.absolute("out") == f"{tmp_path}/out"
    assert not (tmp_path / "localhost").exists()


def test_a_run_into_file_localhost_writes_under_the_root_not_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "x.png")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    out = f"file://localhost{tmp_path}/out"
    # the output is checked against the source as the absolute path it is: inside is refused
    assert main(["run", f"file://localhost{tmp_path}/images", "--output",
                 f"file://localhost{tmp_path}/images/out", "--num-classes", "2"]) == 2
    assert "inside the source" in capsys.readouterr().err
    from goggles.io.lock import output_lock

    with output_lock(out):
        assert (tmp_path / "out").is_dir()
    assert not (work / "localhost").exists()
