"""The GPU path of every torch stage, exercised on a CPU: device resolution, autocast choice,
memory-aware chunk sizes, and the torch likelihood agreeing with the numpy one row by row.
Tests marked ``gpu`` run the same code on a CUDA device when one is present."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from goggles.features import device as dev
from goggles.features.affinity import affinity_block, block_shape
from goggles.features.extraction import extract_filter_maps, prepare_model, use_channels_last
from goggles.inference import likelihood
from goggles.inference.likelihood import (
    class_log_likelihood,
    gaussians_from_statistics,
    hard_statistics,
    likelihood_backend,
    self_mask_positions,
)
from goggles.inference.likelihood_torch import chunk_shape_rows
from tests.conftest import dense_affinity

CUDA = torch.device("cuda")
CPU = torch.device("cpu")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def gpu_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend a CUDA device is visible (nothing is ever run on it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


# -- device resolution -------------------------------------------------------------------------

def test_auto_is_cpu_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dev.resolve_device("auto") == CPU
    with pytest.raises(RuntimeError, match="no CUDA device is visible"):
        dev.resolve_device("cuda")


def test_auto_is_cuda_when_visible(gpu_visible: None) -> None:
    assert dev.resolve_device("auto") == CUDA
    assert dev.resolve_device("cuda:1") == torch.device("cuda:1")
    assert dev.resolve_device(CPU) == CPU


# -- autocast and GEMM precision ---------------------------------------------------------------

def test_autocast_is_off_on_cpu() -> None:
    assert dev.autocast_dtype(CPU) is None
    assert dev.autocast_dtype(CPU, "float16") == torch.bfloat16  # no fast fp16 on CPUs
    assert dev.autocast_dtype(CPU, "bfloat16") == torch.bfloat16


def test_autocast_on_gpu_prefers_bfloat16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert dev.autocast_dtype(CUDA) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert dev.autocast_dtype(CUDA) == torch.float16  # pre-Ampere GPUs
    assert dev.autocast_dtype(CUDA, "float32") is None
    assert dev.autocast_dtype(CUDA, "float16") == torch.float16
    with pytest.raises(ValueError, match="unknown precision"):
        dev.autocast_dtype(CUDA, "int8")


def test_gemm_dtype() -> None:
    assert dev.gemm_dtype(CPU, "float32") == torch.float32
    assert dev.gemm_dtype(CPU, "float16") == torch.bfloat16
    assert dev.gemm_dtype(CUDA, "float16") == torch.float16
    assert dev.gemm_dtype(CUDA, "bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        dev.gemm_dtype(CPU, "float64")


def test_channels_last_on_gpu_and_cpu() -> None:
    assert use_channels_last(CUDA) and use_channels_last(CPU)
    model = prepare_model(torch.nn.Conv2d(3, 4, 3).train(), CPU)
    assert not model.training
    weight = model.weight
    assert isinstance(weight, torch.Tensor)
    assert weight.is_contiguous(memory_format=torch.channels_last)


# -- memory-aware chunk sizes ------------------------------------------------------------------

def test_free_memory_comes_from_the_device() -> None:
    free = dev.free_memory_bytes(CUDA, cuda_mem_get_info=lambda d: (3 * 2**30, 80 * 2**30))
    assert free == 3 * 2**30
    cpu_free = dev.free_memory_bytes(CPU)
    assert cpu_free is None or cpu_free > 0


def test_memory_budget() -> None:
    gib = 2**30
    # a bound set by the caller is kept while enough is free ...
    assert dev.memory_budget_bytes(CUDA, 256, free_bytes=40 * gib) == 256 * 2**20
    # ... and lowered to half of what is free when it is not
    assert dev.memory_budget_bytes(CUDA, 4096, free_bytes=2 * gib) == gib
    # auto: half the free GPU memory; a fixed 256 MiB on a CPU
    assert dev.memory_budget_bytes(CUDA, 0, free_bytes=40 * gib) == 20 * gib
    assert dev.memory_budget_bytes(CPU, 0, free_bytes=64 * gib) == 256 * 2**20
    with pytest.raises(ValueError):
        dev.memory_budget_bytes(CPU, -1)


def test_chunk_count() -> None:
    assert dev.chunk_count(100, 10, 1000) == 10
    assert dev.chunk_count(100, 10, 3) == 3
    assert dev.chunk_count(5, 10, 1000) == 1  # never zero
    with pytest.raises(ValueError):
        dev.chunk_count(100, 0, 10)


def test_extract_batch_fits_free_gpu_memory() -> None:
    per_image = 50 * 2**20
    assert dev.extract_batch_size(CPU, 32, bytes_per_image=per_image) == 32
    assert dev.extract_batch_size(CUDA, 32, bytes_per_image=per_image,
                                  free_bytes=40 * 2**30) == 32
    # 1 GiB free: half of it holds 10 images
    assert dev.extract_batch_size(CUDA, 32, bytes_per_image=per_image, free_bytes=2**30) == 10
    assert dev.extract_batch_size(CUDA, 32, bytes_per_image=per_image, free_bytes=2**20) == 1


def test_affinity_blocks_fit_the_budget() -> None:
    for n, m, budget in [(1000, 5000, 256 * 2**20), (1000, 5000, 2**20), (10, 3, 2**30),
                         (5000, 200000, 64 * 2**20)]:
        rows, cols = block_shape(n, m, 49, 512, 4, budget)
        assert 1 <= rows <= n and 1 <= cols <= m
        if rows > 1 or cols > 1:
            assert rows * 49 * (cols + 512) * 4 <= budget
    # one block spans every prototype when the budget allows
    assert block_shape(1000, 5000, 49, 512, 4, 256 * 2**20)[1] == 5000


def test_affinity_with_an_auto_budget_is_unchanged() -> None:
    rng = np.random.default_rng(0)
    maps = np.maximum(rng.normal(size=(9, 16, 3, 3)), 0).astype(np.float32)
    protos = np.maximum(rng.normal(size=(13, 16)), 0).astype(np.float32)
    auto = affinity_block(maps, protos, memory_mb=0, device="cpu")
    np.testing.assert_array_equal(auto, affinity_block(maps, protos))
    np.testing.assert_allclose(auto, dense_affinity(maps, protos), atol=1e-6, rtol=0)


# -- extract loop ------------------------------------------------------------------------------

def test_extract_batches_arrive_in_order(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    from goggles.features.extraction import preprocess

    rng = np.random.default_rng(0)
    uris = []
    for i in range(5):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)
        uris.append(str(path))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
                                torch.nn.AdaptiveMaxPool2d(2))
    got: list[tuple[int, np.ndarray]] = []
    extract_filter_maps(uris, model, image_size=32, batch_size=2, num_workers=0, device="cpu",
                        on_batch=lambda start, maps: got.append((start, maps.copy())))
    assert [start for start, _ in got] == [0, 2, 4]
    maps = np.concatenate([m for _, m in got])
    assert maps.shape == (5, 4, 2, 2) and maps.dtype == np.float32
    with torch.inference_mode():
        expected = model(torch.stack([preprocess(Image.open(u).convert("RGB"), 32)
                                      for u in uris])).numpy()
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6)


# -- likelihood backends -----------------------------------------------------------------------

def test_likelihood_backend_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert likelihood_backend("auto", "auto") == ("numpy", "cpu")
    assert likelihood_backend("torch", "auto") == ("torch", "cpu")
    assert likelihood_backend("numpy", "cuda") == ("numpy", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert likelihood_backend("auto", "auto") == ("torch", "cuda")
    assert likelihood_backend("auto", "cpu") == ("numpy", "cpu")
    with pytest.raises(ValueError, match="unknown likelihood backend"):
        likelihood_backend("jax")


def _em_inputs(n: int = 157, m: int = 301, k: int = 3, seed: int = 0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    affinity = rng.random((n, m)).astype(np.float32)
    source = rng.integers(0, n, m)
    labels = rng.integers(0, k, n)
    rows, cols = self_mask_positions(source, n, 0)
    params = gaussians_from_statistics(hard_statistics(affinity, labels, k, rows, cols), 1e-3,
                                       None)
    return affinity, source, labels[source], params


def test_torch_likelihood_matches_numpy() -> None:
    affinity, source, prototype_class, params = _em_inputs()
    rows, cols = self_mask_positions(source, len(affinity), 0)
    numpy_ll = class_log_likelihood(affinity, params, prototype_class, rows, cols,
                                    backend="numpy")
    torch_ll = class_log_likelihood(affinity, params, prototype_class, rows, cols,
                                    backend="torch", device="cpu")
    np.testing.assert_allclose(torch_ll, numpy_ll, rtol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_each_row_depends_on_that_row_alone(backend: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Any split of the rows, any chunk size and thread count: bit-identical rows."""
    affinity, source, prototype_class, params = _em_inputs()
    n = len(affinity)
    whole = class_log_likelihood(affinity, params, prototype_class,
                                 *self_mask_positions(source, n, 0), backend=backend,
                                 device="cpu")
    monkeypatch.setattr(likelihood, "CHUNK_ELEMENTS", 1000)
    monkeypatch.setattr(likelihood, "cpu_threads", lambda: 3)
    parts = [class_log_likelihood(affinity[a:b], params, prototype_class,
                                  *self_mask_positions(source, b - a, a), backend=backend,
                                  device="cpu")
             for a, b in [(0, 1), (1, 40), (40, 41), (41, n)]]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_hard_statistics_exact_whatever_the_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    affinity, source, _, _ = _em_inputs(seed=1)
    labels = np.random.default_rng(2).integers(0, 3, len(affinity))
    rows, cols = self_mask_positions(source, len(affinity), 0)
    whole = hard_statistics(affinity, labels, 3, rows, cols)
    monkeypatch.setattr(likelihood, "CHUNK_ELEMENTS", 700)
    monkeypatch.setattr(likelihood, "cpu_threads", lambda: 2)
    chunked = hard_statistics(affinity, labels, 3, rows, cols)
    for name in ("weight", "total", "squares", "mass"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name))
    # the units are integers: the sums are exact
    assert np.array_equal(whole.total, np.rint(whole.total))


def test_torch_chunks_are_bigger_on_a_gpu() -> None:
    assert chunk_shape_rows(10_000, CUDA) > chunk_shape_rows(10_000, CPU) >= 1
    assert chunk_shape_rows(10**9, CPU) == 1


# -- on a real GPU -----------------------------------------------------------------------------

@pytest.mark.gpu
@needs_gpu
def test_gpu_stages_agree_with_cpu() -> None:
    affinity, source, prototype_class, params = _em_inputs()
    rows, cols = self_mask_positions(source, len(affinity), 0)
    np.testing.assert_allclose(
        class_log_likelihood(affinity, params, prototype_class, rows, cols, backend="torch",
                             device="cuda"),
        class_log_likelihood(affinity, params, prototype_class, rows, cols, backend="numpy"),
        rtol=1e-10)
    rng = np.random.default_rng(0)
    maps = np.maximum(rng.normal(size=(20, 64, 7, 7)), 0).astype(np.float32)
    protos = np.maximum(rng.normal(size=(50, 64)), 0).astype(np.float32)
    np.testing.assert_allclose(affinity_block(maps, protos, device="cuda", memory_mb=0),
                               affinity_block(maps, protos), atol=1e-5)
    # a 1 MiB budget on the GPU: one image and a partial set of prototypes per block
    maps = np.maximum(rng.normal(size=(3, 16, 64, 64)), 0).astype(np.float32)
    protos = np.maximum(rng.normal(size=(150, 16)), 0).astype(np.float32)
    rows, cols = block_shape(3, 150, 64 * 64, 16, 4, 2**20)
    assert rows < 3 and cols < 150
    np.testing.assert_allclose(affinity_block(maps, protos, device="cuda", memory_mb=1),
                               dense_affinity(maps, protos), atol=1e-5, rtol=0)


@pytest.mark.gpu
@needs_gpu
def test_gpu_extract_agrees_with_cpu(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    rng = np.random.default_rng(0)
    uris = []
    for i in range(5):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)
        uris.append(str(path))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
                                torch.nn.AdaptiveMaxPool2d(2))
    results = {}
    for where in ("cpu", "cuda"):
        got: list[np.ndarray] = []

        def keep(start: int, maps: np.ndarray, got: list[np.ndarray] = got) -> None:
            got.append(maps)

        extract_filter_maps(uris, model, image_size=32, batch_size=2, num_workers=0,
                            device=where, on_batch=keep)
        results[where] = np.concatenate(got)
    # the GPU runs under bfloat16/float16 autocast: agreement to its precision
    np.testing.assert_allclose(results["cuda"], results["cpu"], rtol=2e-2, atol=2e-2)
