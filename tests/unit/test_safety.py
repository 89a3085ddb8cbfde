"""Safety (issue 8): weights never run code when loaded, manifest URIs stay under the source
prefix, and no credential value reaches logs, artifacts or the compiled pipeline."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image

from goggles.features.backbones import load_backbone, load_numpy_pickle
from goggles.ingest.config import IngestConfig
from goggles.ingest.manifest import build_manifest
from goggles.parameters import RunParameters
from goggles.pipeline.inprocess import run_inprocess
from tests.conftest import small_source

REPO = Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: a visible side effect of running code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


def _png(seed: int, size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


# -- weights --------------------------------------------------------------------------------------

def test_the_payload_really_runs_code_when_unpickled_naively(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_Payload(marker))).close()  # noqa: S301 - the point of the test
    assert marker.exists()  # so the refusals below are not vacuous


def test_numpy_pickle_loader_refuses_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for payload in (_Payload(marker), {"VGG16_0": {"Conv_0": _Payload(marker)}}):
        with pytest.raises(pickle.UnpicklingError,
                           match=r"refusing to unpickle (io|builtins)\.open"):
            load_numpy_pickle(pickle.dumps(payload))
    assert not marker.exists()
    weights = {"Conv_0": {"kernel": np.ones((3, 3, 3, 4), np.float32), "bias": np.zeros(4)}}
    loaded = load_numpy_pickle(pickle.dumps(weights))
    assert isinstance(loaded, dict)
    np.testing.assert_array_equal(loaded["Conv_0"]["kernel"], weights["Conv_0"]["kernel"])


def test_explicit_weights_file_with_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"features.0.0.weight": _Payload(marker)}, evil)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_backbone("mobilenet_v2", weights_uri=str(evil))
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # what a careless loader would do
    assert marker.exists()


def test_pickle_disguised_as_safetensors_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("safetensors", reason="pip install safetensors (the dev extra)")
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps({"features.0.0.weight": _Payload(marker)}))
    with pytest.raises(Exception, match="(?i)header"):
        load_backbone("mobilenet_v2", weights_uri=str(evil))
    assert not marker.exists()


def test_a_run_with_malicious_weights_stops_before_running_them(tmp_path: Path) -> None:
    source = small_source(tmp_path / "in", 4, bad=False)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"features.0.0.weight": _Payload(marker)}, evil)
    with pytest.raises(pickle.UnpicklingError):
        run_inprocess(RunParameters(source_uri=str(source), output_uri=str(tmp_path / "out"),
                                    num_classes=2, backbone="mobilenet_v2",
                                    weights_uri=str(evil)))
    assert not marker.exists()


def _unsafe_loads(path: Path) -> list[str]:
    """Calls in ``path`` that could unpickle arbitrary objects."""
    import ast

    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if name.endswith(("torch.load", "load_state_dict_from_url")) and \
                    keywords.get("weights_only") != "True":
                found.append(f"{where}: {name} without weights_only=True")
            if name in ("np.load", "numpy.load") and keywords.get("allow_pickle") == "True":
                found.append(f"{where}: {name}(allow_pickle=True)")
            if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "pd.read_pickle",
                        "pandas.read_pickle", "marshal.loads", "shelve.open"):
                found.append(f"{where}: {name}")
        if isinstance(node, ast.ClassDef) and any(ast.unparse(b) == "pickle.Unpickler"
                                                  for b in node.bases):
            if not any(isinstance(f, ast.FunctionDef) and f.name == "find_class"
                       for f in node.body):
                found.append(f"{where}: Unpickler subclass {node.name} without find_class")
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""]
            found += [f"{where}: imports {m}" for m in modules
                      if m.split(".")[0] in ("dill", "joblib", "cloudpickle", "shelve")]
    return found


def test_every_weights_load_in_the_code_is_restricted() -> None:
    sources = sorted((REPO / "goggles").rglob("*.py"))  # pipeline.py and components/ too
    assert any(p.name == "backbones.py" for p in sources)
    assert not [issue for path in sources for issue in _unsafe_loads(path)]


def test_the_code_scan_catches_an_unsafe_load(tmp_path: Path) -> None:
    bad = tmp_path / "probe.py"
    bad.write_text("import pickle, torch\n"
                   "state = torch.load('w.pth')\n"
                   "other = torch.load('w.pth', weights_only=False)\n"
                   "obj = pickle.loads(b'')\n"
                   "class Open(pickle.Unpickler):\n    pass\n")
    issues = _unsafe_loads(bad)
    assert len(issues) == 4, issues


# -- manifest URIs stay under the source --------------------------------------------------------

def test_local_manifest_uris_stay_under_the_source(tmp_path: Path) -> None:
    source, outside = tmp_path / "source", tmp_path / "outside"
    (source / "cls").mkdir(parents=True)
    outside.mkdir()
    (outside / "elsewhere.png").write_bytes(_png(1))
    (source / "cls" / "a.png").write_bytes(_png(2))
    (source / "cls" / "linked").symlink_to(outside, target_is_directory=True)
    (source / "..::escape").mkdir()  # fsspec would read "source/.." for this folder's files
    (source / "..::escape" / "b.png").write_bytes(_png(3))
    manifest = build_manifest(str(source), IngestConfig(follow_symlinks=True)).to_pylist()
    for row in manifest:
        uri = str(row["uri"])
        assert os.path.normpath(uri).startswith(str(source) + os.sep), uri
    by_name = {Path(str(r["uri"])).name: r for r in manifest}
    # a symlinked folder is read through its link's path, like the symlinked dataset in tests
    assert by_name["elsewhere.png"]["status"] == "accepted"
    assert str(by_name["elsewhere.png"]["uri"]).startswith(str(source / "cls" / "linked"))
    assert by_name["b.png"]["status"] == "rejected"
    assert "URL-chaining" in str(by_name["b.png"]["error"])


def test_remote_keys_that_could_escape_the_prefix_are_rejected() -> None:
    fs = fsspec.filesystem("memory")
    root = f"/escape-{uuid.uuid4().hex}"
    fs.pipe(f"{root}/src/cls/good.png", _png(4))
    for key in ("src/../secret.png", "src/cls/../../secret.png", "src/cls//double.png",
                "src/./dot.png", "src/cls/x.png::memory:"):
        fs.pipe(f"{root}/{key}", _png(5))
    try:
        manifest = build_manifest(f"memory://{root}/src", IngestConfig()).to_pylist()
    finally:
        fs.rm(root, recursive=True)
    assert len(manifest) == 5  # `x.png::memory:` does not end in an image suffix
    accepted = [r for r in manifest if r["status"] == "accepted"]
    assert [str(r["uri"]).rsplit("/", 1)[-1] for r in accepted] == ["good.png"]
    for row in manifest:
        assert str(row["uri"]).startswith(f"memory://{root}/src/")
        if row["status"] == "rejected":
            assert "could resolve outside the source prefix" in str(row["error"])


# -- credentials ----------------------------------------------------------------------------------

def _plant_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    secrets = [f"planted-{name}-{uuid.uuid4().hex}" for name in ("aws", "token", "gcp", "azure")]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA" + secrets[0][-16:].upper())
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secrets[0])
    monkeypatch.setenv("AWS_SESSION_TOKEN", secrets[1])
    key_file = tmp_path / "service-account.json"
    key_file.write_text(json.dumps({"type": "service_account", "private_key": secrets[2]}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    monkeypatch.setenv("AZURE_STORAGE_KEY", secrets[3])
    return secrets + ["AKIA" + secrets[0][-16:].upper()]


def _files_containing(root: Path, secrets: list[str]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {s}" for s in secrets if s.encode() in data]
    return found


@pytest.mark.slow
def test_no_credential_reaches_logs_or_artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture,
                                                 capfd: pytest.CaptureFixture[str]) -> None:
    secrets = _plant_credentials(monkeypatch, tmp_path)
    source = small_source(tmp_path / "in", 6, size=64)
    out = tmp_path / "out"
    caplog.set_level(logging.DEBUG)
    metrics = run_inprocess(RunParameters(source_uri=str(source), output_uri=str(out),
                                          num_classes=2, backbone="mobilenet_v2", top_k=2,
                                          device="cpu"))
    assert metrics["n_images"] == 6 and metrics["n_rejected"] == 1
    captured = capfd.readouterr()
    text = "\n".join([caplog.text, captured.out, captured.err,
                      *(r.getMessage() for r in caplog.records)])
    assert caplog.records, "nothing was logged: the search would be vacuous"
    assert not [s for s in secrets if s in text]
    assert (out / "report.html").is_file() and not _files_containing(out, secrets)


def test_no_credential_reaches_the_compiled_pipeline(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from goggles.kubeflow import pipeline  # a pipeline.py that fails to import fails this test

    assert (REPO / "pipeline.py").resolve() == Path(pipeline.__file__).resolve()  # this checkout's
    secrets = _plant_credentials(monkeypatch, tmp_path)
    package = tmp_path / "goggles_pipeline.yaml"
    pipeline.compile_pipeline(str(package))
    text = package.read_text()
    assert "goggles" in text and len(text) > 1000  # a real compiled spec
    assert not [s for s in secrets if s in text]
    assert str(tmp_path / "service-account.json") not in text
