"""Receptive fields: the recurrence against real convolutions, the pinned table against
torchvision's architectures, and the patch cut from an image."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from goggles.report.patches import (
    FIELDS,
    ReceptiveField,
    patch_boxes,
    prototype_patch,
    receptive_field,
)


def test_recurrence_on_simple_chains() -> None:
    assert receptive_field([]) == ReceptiveField(1.0, 1.0, 0.5)
    # two 3x3 convolutions (padding 1) then a 2x2 max-pool: 6 pixels, stride 2
    assert receptive_field([(3, 1, 1, 1), (3, 1, 1, 1), (2, 2, 0, 1)]) == ReceptiveField(
        6.0, 2.0, 1.0)
    # a dilated 3x3 convolution spans 5 pixels
    assert receptive_field([(3, 1, 0, 2)]).size == 5.0


def _footprint(layers: list[tuple[int, int, int, int]], size: int, h: int, w: int):  # type: ignore[no-untyped-def]
    """Input pixels with a non-zero gradient for output position (h, w) (the paper's
    definition), through all-positive convolutions and average pools of the same geometry."""
    import torch
    from torch import nn

    modules: list[nn.Module] = []
    for kernel, stride, padding, dilation in layers:
        conv = nn.Conv2d(1, 1, kernel, stride, padding, dilation, bias=False)
        nn.init.constant_(conv.weight, 1.0)
        modules.append(conv)
    net = nn.Sequential(*modules)
    x = torch.ones(1, 1, size, size, requires_grad=True)
    net(x)[0, 0, h, w].backward()
    assert x.grad is not None
    rows, cols = np.nonzero(x.grad[0, 0].numpy())
    return cols.min(), rows.min(), cols.max() + 1, rows.max() + 1


@pytest.mark.parametrize("backbone", [
    "vgg16", pytest.param("mobilenet_v2", marks=pytest.mark.slow)])  # 52 layers: ~10 s
def test_pinned_fields_match_the_architectures_and_their_gradients(backbone: str) -> None:
    import torch
    from torchvision import models

    from goggles.report.patches import layers_of

    with torch.device("meta"):
        features = getattr(models, backbone)(weights=None).features
    layers = layers_of(features)
    assert receptive_field(layers) == FIELDS[backbone]
    field = FIELDS[backbone]
    for h, w in ((0, 0), (3, 3), (6, 2)):
        box, cell = patch_boxes(field, h, w, 224)
        assert _footprint(layers, 224, h, w) == tuple(round(v) for v in box)
        assert cell[2] - cell[0] <= 32


def test_vgg16_cells_are_centred_on_their_stride_cell() -> None:
    box, cell = patch_boxes(FIELDS["vgg16"], 2, 5, 224)
    assert cell == (160.0, 64.0, 192.0, 96.0)  # x = 32*5 .. 32*6, y = 32*2 .. 32*3
    assert box == (70.0, 0.0, 224.0, 186.0)  # 212 pixels around (176, 80), clipped


def test_patch_is_cut_from_the_original_image_and_boxes_the_cell() -> None:
    image = Image.new("RGB", (448, 224), "white")  # resized to 224 x 224: x halves
    image.paste((0, 0, 0), (0, 0, 60, 224))  # a black band at the left edge
    patch = prototype_patch(image, FIELDS["vgg16"], 0, 0, image_size=224, out_size=112)
    # field of (0, 0) is [0, 122) in the square: [0, 244) x [0, 122) of the original
    assert patch.size == (112, 56)
    pixels = np.asarray(patch)
    assert (pixels[30, 5] < 20).all()  # the black band is at the patch's left
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 100)
    rows, cols = np.nonzero(red)
    # the cell [0, 32) of the square is [0, 64) x [0, 32) of the original: in the patch
    # (scale 112 / 244), x in [0, 29], y in [0, 14]
    assert rows.max() <= 15 and cols.max() <= 30 and red.sum() > 40
