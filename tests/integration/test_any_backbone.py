"""Model specs through the whole tool at random initialisation (no hub is reachable here):
``goggles run`` through the default local Kubeflow runner with a timm vision transformer
(patch-token affinity, its pooled view in graph EM) and a timm CNN, ``--train`` and
``goggles apply`` on their runs, weights from gs:// (fake-gcs-server, the real protocol) with
the SHA-256 pin, and new weights invalidating the feature cache and the resume record.

Tiny synthetic images (two colours of noise, 8 each) keep every run short; no accuracy is
claimed, only that every stage completes and records what it used.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from goggles.cli import main
from goggles.features.backbones import load_backbone
from goggles.features.cache import weights_digest
from goggles.parameters import RunParameters
from goggles.pipeline.inprocess import run_inprocess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PER_CLASS = 8


def tiny_source(root: Path, per_class: int = PER_CLASS, seed: int = 0) -> Path:
    """Two folders of 48x48 noise, reddish and bluish."""
    rng = np.random.default_rng(seed)
    for name, channel in (("red", 0), ("blue", 2)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 120, (48, 48, 3), dtype=np.uint8)
            pixels[..., channel] += 120
            Image.fromarray(pixels).save(root / name / f"{name}-{i}.png")
    return root


def timm_checkpoint(arch: str, path: Path, seed: int = 0) -> str:
    """Write ``arch``'s random-init state dict to ``path``; its SHA-256."""
    import timm

    torch.manual_seed(seed)
    buffer = io.BytesIO()
    torch.save(timm.create_model(arch).state_dict(), buffer)
    path.write_bytes(buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("any-backbone")
    tiny_source(root / "images")
    tiny_source(root / "new", per_class=3, seed=1)
    return root


@pytest.mark.parametrize("arch", ["test_vit", "test_resnet"])
def test_local_runner_trains_and_applies_with_a_timm_backbone(work: Path, arch: str,
                                                               capsys: pytest.CaptureFixture[str]
                                                               ) -> None:
    weights = work / f"{arch}.pth"
    digest = timm_checkpoint(arch, weights)
    out = work / f"out-{arch}"
    code = main(["run", str(work / "images"), "--num-classes", "2", "--output", str(out),
                 "--backbone", f"timm:{arch}", "--weights", str(weights),
                 "--weights-sha256", digest, "--descriptor-backbone", "none", "--train",
                 "--pipeline-root", str(work / f"kfp-{arch}")])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["runner"] == "local" and metrics["backbone"] == f"timm:{arch}"
    assert metrics["n_images"] == 2 * PER_CLASS
    assert metrics["preprocessing"][f"timm:{arch}"]["image_size"] == 160
    meta = json.loads((out / "artifacts" / "features" / "meta.json").read_text())
    assert meta["preprocessing"] == metrics["preprocessing"]
    if arch == "test_vit":  # patch tokens: a 10x10 grid of 64 channels, and the pooled view
        assert meta["shape"] == [64, 10, 10]
        assert meta["descriptors"] == ["timm:test_vit", "timm:test_vit@pooled"]
    else:
        assert meta["shape"] == [96, 5, 5]
        assert meta["descriptors"] == ["timm:test_resnet"]
    model = json.loads((out / "model" / "model.json").read_text())
    assert [n["backbone"] for n in model["input"]["networks"]] == meta["descriptors"]
    assert model["input"]["dim"] == 2048 + (64 if arch == "test_vit" else 0)

    for labeler in ("end-model", "affinity"):
        applied = work / f"applied-{arch}-{labeler}"
        code = main(["apply", str(out), str(work / "new"), "--output", str(applied),
                     "--labeler", labeler])
        assert code == 0, capsys.readouterr().err
        applied_metrics = json.loads((applied / "metrics.json").read_text())
        assert applied_metrics["n_images"] == 6 and applied_metrics["labeler"] == labeler


def test_weights_from_gcs_with_the_pin(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fsspec

    from goggles.config import ConfigError
    from tests.integration.servers import GCSServer

    digest = timm_checkpoint("test_vit", work / "gcs.pth", seed=2)
    data = (work / "gcs.pth").read_bytes()
    with GCSServer(seed={"goggles-weights": {"vit/w.pth": data}}) as server:
        for key, value in server.environment(server.url).items():
            monkeypatch.setenv(key, value)
        fsspec.get_filesystem_class("gs").clear_instance_cache()
        remote, source = load_backbone("timm:test_vit", "gs://goggles-weights/vit/w.pth", digest)
        local, _ = load_backbone("timm:test_vit", str(work / "gcs.pth"))
        assert source == "gs://goggles-weights/vit/w.pth"
        assert weights_digest(remote) == weights_digest(local)
        with pytest.raises(ConfigError, match="not the pinned"):
            load_backbone("timm:test_vit", "gs://goggles-weights/vit/w.pth", "0" * 64)
        with pytest.raises(ConfigError, match="cannot be read"):
            load_backbone("timm:test_vit", "gs://goggles-weights/vit/absent.pth")


def test_new_weights_invalidate_the_feature_cache_and_the_resume_record(work: Path) -> None:
    weights = work / "changing.pth"
    cache = work / "feature-cache"
    out = work / "resumed"

    def run(seed: int, output: Path) -> dict:
        timm_checkpoint("test_resnet", weights, seed=seed)
        return run_inprocess(RunParameters(
            source_uri=str(work / "images"), output_uri=str(output), num_classes=2,
            backbone="timm:test_resnet", weights_uri=str(weights), descriptor_backbone="none",
            feature_cache_uri=str(cache)))

    def namespaces() -> set[str]:
        return {p.name for p in (cache / "v1").iterdir()}

    first = run(0, out)
    assert first["features_computed"] == 2 * PER_CLASS
    assert len(namespaces()) == 1
    run(1, out)  # same output, other weights: extraction is redone, into a new cache folder
    assert len(namespaces()) == 2
    again = run(0, work / "elsewhere")  # the first weights again: every image from the cache
    assert again["features_reused"] == 2 * PER_CLASS and again["features_computed"] == 0
    assert len(namespaces()) == 2
