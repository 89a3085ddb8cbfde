"""The backbone registry's families (goggles/features/families/) at random initialisation: each
family's smallest architecture, a checkpoint the test writes, its weights loaded from a file and
from memory:// with the SHA-256 pin, its filter maps (a transformer's patch tokens as a grid)
and pooled view, its own preprocessing; names, pins and missing weights refused in one line.

No hub is reachable here, so no pretrained weights are claimed: these check the wiring only.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from goggles.cli import main
from goggles.config import ConfigError, backbone_file_name, parse_backbone
from goggles.features import incremental
from goggles.features.backbones import load_backbone
from goggles.features.cache import weights_digest
from goggles.features.extraction import extract_filter_maps
from goggles.features.network import WeightsNotFound, read_weights_bytes
from goggles.io import storage
from goggles.parameters import RunParameters

TINY_CLIP = "goggles-tiny-clip"


def tiny_clip_config(folder: Path) -> None:
    """Register a tiny OpenCLIP architecture (the smallest listed one is 63M parameters)."""
    import open_clip

    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16,
                             "patch_size": 16},
              "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 1,
                           "layers": 1}}
    path = folder / f"{TINY_CLIP}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)


def checkpoint(family: str, folder: Path, seed: int = 0) -> tuple[str, bytes, str]:
    """(backbone name, checkpoint bytes, file suffix) of ``family``'s smallest architecture at
    random initialisation drawn from ``seed``."""
    torch.manual_seed(seed)
    if family == "timm-vit" or family == "timm-cnn":
        import timm

        arch = "test_vit" if family == "timm-vit" else "test_resnet"
        state, name = timm.create_model(arch).state_dict(), f"timm:{arch}"
    elif family == "open_clip":
        import open_clip

        tiny_clip_config(folder)
        state, name = open_clip.create_model(TINY_CLIP).state_dict(), f"open_clip:{TINY_CLIP}:"
    elif family == "hf":
        from transformers import ViTConfig, ViTImageProcessor, ViTModel

        config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, image_size=64, patch_size=16)
        model = ViTModel(config)
        config.save_pretrained(folder / "hf-vit")  # the Hugging Face cache's config.json
        ViTImageProcessor(size={"height": 64, "width": 64}, resample=3).save_pretrained(
            folder / "hf-vit")
        state, name = model.state_dict(), f"hf:{folder / 'hf-vit'}"
        from safetensors.torch import save

        return name, save({k: v.contiguous() for k, v in state.items()}), ".safetensors"
    else:
        import torchvision

        state = torchvision.models.get_model("mobilenet_v3_small").state_dict()
        name = "torchvision:mobilenet_v3_small"
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return name, buffer.getvalue(), ".pth"


FAMILIES = {  # family -> (maps [C, h, w], pooled dim or 0, image size, interpolation)
    "timm-vit": ((64, 10, 10), 64, 160, "bicubic"),
    "timm-cnn": ((96, 5, 5), 0, 160, "bilinear"),
    "open_clip": ((32, 4, 4), 16, 64, "bicubic"),
    "hf": ((32, 4, 4), 32, 64, "bicubic"),
    "torchvision": ((576, 7, 7), 0, 224, "bilinear"),
}


def images(folder: Path, n: int = 3) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def outputs(model: Any, uris: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    maps: list[np.ndarray] = []
    pooled: list[np.ndarray] = []
    extract_filter_maps(uris, model, batch_size=2, num_workers=0,
                        on_batch=lambda _s, m: maps.append(m),
                        on_embedding=lambda _s, e: pooled.append(e))
    return np.concatenate(maps), (np.concatenate(pooled) if pooled else None)


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_loads_its_checkpoint_from_a_file_and_memory_with_the_pin(
        family: str, tmp_path: Path) -> None:
    name, data, suffix = checkpoint(family, tmp_path)
    digest = hashlib.sha256(data).hexdigest()
    path = tmp_path / f"weights{suffix}"
    path.write_bytes(data)
    memory = f"memory://goggles-families/{family}/weights{suffix}"
    storage.write_bytes(memory, data)
    uris = images(tmp_path)

    from_file, source = load_backbone(name, str(path), digest)
    from_memory, _ = load_backbone(name, memory, digest)
    assert source == str(path)
    assert weights_digest(from_file) == weights_digest(from_memory)
    shape, pooled_dim, size, interpolation = FAMILIES[family]
    assert from_file.preprocessing.image_size == size
    assert from_file.preprocessing.interpolation == interpolation
    maps, pooled = outputs(from_file, uris)
    assert maps.shape == (3, *shape) and maps.dtype == np.float32 and np.isfinite(maps).all()
    if pooled_dim:
        assert pooled is not None and pooled.shape == (3, pooled_dim)
    else:
        assert pooled is None
    again, _ = outputs(from_memory, uris)
    np.testing.assert_array_equal(maps, again)

    # other weights of the same architecture: another digest, other maps (the file is read)
    _, other_data, _ = checkpoint(family, tmp_path, seed=1)
    other_path = tmp_path / f"other{suffix}"
    other_path.write_bytes(other_data)
    other, _ = load_backbone(name, str(other_path))
    assert weights_digest(other) != weights_digest(from_file)
    assert not np.allclose(outputs(other, uris)[0], maps)


def test_a_transformers_maps_are_its_patch_tokens(tmp_path: Path) -> None:
    import timm

    name, data, _ = checkpoint("timm-vit", tmp_path)
    (tmp_path / "w.pth").write_bytes(data)
    model, _ = load_backbone(name, str(tmp_path / "w.pth"))
    reference = timm.create_model("test_vit")
    reference.load_state_dict(torch.load(tmp_path / "w.pth", weights_only=True))
    x = torch.randn(2, 3, 160, 160)
    with torch.inference_mode():
        maps, pooled = model(x)
        tokens = reference.eval().forward_features(x)
        head = reference.forward_head(tokens, pre_logits=True)
    assert maps.shape == (2, 64, 10, 10)
    # position (h, w) is patch token 1 + 10h + w (token 0 is the class token)
    torch.testing.assert_close(maps[:, :, 3, 7], tokens[:, 1 + 10 * 3 + 7])
    torch.testing.assert_close(pooled, head)


def test_backbone_names_are_checked_when_the_run_is_declared() -> None:
    assert parse_backbone("vgg16") == ("goggles", "vgg16", "")
    assert parse_backbone("timm:vit_small_patch14_dinov2.lvd142m") == \
        ("timm", "vit_small_patch14_dinov2.lvd142m", "")
    assert parse_backbone("open_clip:ViT-B-32:laion2b_s34b_b79k") == \
        ("open_clip", "ViT-B-32", "laion2b_s34b_b79k")
    assert parse_backbone("hf:facebook/dinov2-small") == ("hf", "facebook/dinov2-small", "")
    RunParameters(backbone="torchvision:resnet50", descriptor_backbone="none")
    for bad in ("resnet50", "timm:", "keras:vgg", "open_clip::tag", "hf: x"):
        with pytest.raises(ConfigError) as raised:
            RunParameters(backbone=bad)
        assert raised.value.parameter == "backbone"
        assert "\n" not in str(raised.value) and ":<" in str(raised.value)  # names the form
    with pytest.raises(ConfigError) as raised:
        RunParameters(descriptor_backbone="timm:")
    assert raised.value.parameter == "descriptor_backbone"
    with pytest.raises(ConfigError, match="64 lowercase hex"):
        RunParameters(weights_sha256="abc")


def test_file_names_of_specs_have_no_separator_and_todays_are_unchanged() -> None:
    assert backbone_file_name("vgg16") == "vgg16"
    assert backbone_file_name("mobilenet_v2") == "mobilenet_v2"
    assert backbone_file_name("hf:facebook/dinov2-small@pooled") == \
        "hf_facebook--dinov2-small@pooled"
    assert "/" not in backbone_file_name("hf:a/b/c")


def test_a_wrong_digest_or_a_missing_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    path.write_bytes(b"weights")
    assert read_weights_bytes(str(path), hashlib.sha256(b"weights").hexdigest()) == b"weights"
    with pytest.raises(ConfigError) as raised:
        read_weights_bytes(str(path), "0" * 64)
    message = str(raised.value)
    assert "\n" not in message and hashlib.sha256(b"weights").hexdigest() in message
    assert raised.value.parameter == "weights_sha256"
    for missing in (str(tmp_path / "absent.pth"), "memory://goggles-families/absent.pth"):
        with pytest.raises(ConfigError) as raised:
            read_weights_bytes(missing)
        assert "\n" not in str(raised.value) and "--weights" in str(raised.value)


@pytest.mark.parametrize("problem", ["digest", "missing", "library"])
def test_the_run_is_refused_before_any_stage(problem: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "src" / "a"
    source.mkdir(parents=True)
    images(source, 2)
    name, data, _ = checkpoint("timm-vit", tmp_path)
    (tmp_path / "w.pth").write_bytes(data)
    weights = str(tmp_path / ("absent.pth" if problem == "missing" else "w.pth"))
    pin = "0" * 64 if problem == "digest" else hashlib.sha256(data).hexdigest()
    if problem == "library":  # a family whose library is not installed names its extra
        import goggles.features.families.hf_family as hf

        hf.LIBRARY = "goggles_no_such_library"
        name = "hf:some/model"
    out = tmp_path / "out"
    try:
        code = main(["run", str(tmp_path / "src"), "--output", str(out), "--num-classes", "2",
                     "--backbone", name,
                     "--weights", weights, "--weights-sha256", pin, "--runner", "inprocess",
                     "--descriptor-backbone", "none"])
    finally:
        if problem == "library":
            hf.LIBRARY = "transformers"
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    expected = {"digest": "not the pinned", "missing": "does not exist",
                "library": "goggles[hf]"}[problem]
    assert expected in err
    assert not (out / "manifest.parquet").exists()


def test_offline_without_weights_is_one_line_naming_both_ways(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOGGLES_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFound) as raised:
        load_backbone("timm:test_vit")
    message = str(raised.value)
    assert "\n" not in message
    assert "'timm:test_vit'" in message and "--weights" in message
    assert "Hugging Face cache" in message


def test_the_feature_cache_key_covers_weights_and_preprocessing(tmp_path: Path) -> None:
    name, data, _ = checkpoint("timm-vit", tmp_path)
    _, other, _ = checkpoint("timm-vit", tmp_path, seed=1)
    (tmp_path / "a.pth").write_bytes(data)
    (tmp_path / "b.pth").write_bytes(other)
    first, _ = load_backbone(name, str(tmp_path / "a.pth"))
    second, _ = load_backbone(name, str(tmp_path / "b.pth"))

    def cache(model: Any, kind: str = "maps") -> Any:
        return incremental.open_cache(str(tmp_path / "cache"), kind, name, model,
                                      image_size=224, device=torch.device("cpu"),
                                      precision="auto")

    assert cache(first).shape == (64, 10, 10) and cache(first, "pooled").shape == (64,)
    assert cache(first).image_size == 160 and "bicubic" in cache(first).preprocess
    assert cache(first).namespace != cache(second).namespace
    assert cache(first).namespace.startswith("maps-timm_test_vit-")
    assert cache(first).namespace != cache(first, "pooled").namespace


def test_the_backbone_method_is_refused_for_a_model_spec(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    source = tmp_path / "src" / "a"
    source.mkdir(parents=True)
    images(source, 2)
    code = main(["run", str(tmp_path / "src"), "--output", str(tmp_path / "out"),
                 "--num-classes", "2", "--backbone", "timm:test_vit", "--method", "backbone",
                 "--runner", "inprocess"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "ImageNet classifier" in err, err
    assert not (tmp_path / "out" / "manifest.parquet").exists()
