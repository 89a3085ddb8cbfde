"""Where a prototype comes from in its image: the receptive field of a filter-map position
(paper §3.1–3.2, Figure 3).

A position ``(h, w)`` of the filter map is computed from a square window of the resized input:
its receptive field. For a chain of convolutions and poolings (kernel ``k``, stride ``s``,
padding ``p``, dilation ``d``; ``k_eff = d(k - 1) + 1``) the standard recurrence, starting from
one input pixel (size 1, jump 1, centre 0.5 in continuous pixel coordinates), is::

    size   += (k_eff - 1) * jump
    centre += ((k_eff - 1) / 2 - p) * jump
    jump   *= s

so position ``h`` is centred at ``centre + h * jump`` and spans ``size`` pixels. The paper
finds the same window as the input pixels with a non-zero gradient (tests check both ways).
For the two backbones at 224x224 (computed from torchvision's architectures, see
:func:`layers_of`, and pinned in :data:`FIELDS`):

* VGG-16 up to the last max-pool: size 212, jump 32, centre 16 — cell ``h`` is centred on the
  32-pixel stride cell ``[32h, 32h + 32)`` but sees 212 pixels, nearly the whole image. What
  the prototype responds to is concentrated near the centre (the effective receptive field is
  far smaller than the theoretical one), so the report draws the whole window, clipped to the
  image, with the 32-pixel cell outlined.
* MobileNetV2's last block: size 491, jump 32, centre 0.5 — the window covers the image.

Images are resized to ``image_size`` squares without keeping the aspect ratio
(:func:`goggles.features.extraction.preprocess`), so a box in resized coordinates maps back to the
original by scaling x and y separately.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from PIL import Image, ImageDraw


@dataclass(frozen=True)
class ReceptiveField:
    """Size and jump (stride) in input pixels, and the centre of position 0."""

    size: float
    jump: float
    centre: float


def receptive_field(layers: Iterable[tuple[int, int, int, int]]) -> ReceptiveField:
    """The receptive field after ``layers`` of ``(kernel, stride, padding, dilation)``,
    in forward order (see the module docstring for the recurrence)."""
    size, jump, centre = 1.0, 1.0, 0.5
    for kernel, stride, padding, dilation in layers:
        effective = dilation * (kernel - 1) + 1
        size += (effective - 1) * jump
        centre += ((effective - 1) / 2 - padding) * jump
        jump *= stride
    return ReceptiveField(size=size, jump=jump, centre=centre)


def layers_of(module) -> list[tuple[int, int, int, int]]:  # type: ignore[no-untyped-def]
    """``(kernel, stride, padding, dilation)`` of every convolution and pooling of a torch
    module in registration order — the forward order of torchvision's VGG-16 and MobileNetV2
    feature stacks (a residual's skip path is shorter, so the main path bounds the field)."""
    from torch import nn

    def first(value):  # type: ignore[no-untyped-def]
        return int(value[0] if isinstance(value, tuple) else value)

    out = []
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
            out.append((first(layer.kernel_size), first(layer.stride), first(layer.padding),
                        first(getattr(layer, "dilation", 1))))
    return out


# computed with receptive_field(layers_of(torchvision.models.<name>().features)); a unit test
# recomputes them from the architectures and checks them against input gradients
FIELDS = {
    "vgg16": ReceptiveField(size=212.0, jump=32.0, centre=16.0),
    "mobilenet_v2": ReceptiveField(size=491.0, jump=32.0, centre=0.5),
}


Box = tuple[float, float, float, float]  # left, top, right, bottom


def patch_boxes(field: ReceptiveField, h: int, w: int, image_size: int) -> tuple[Box, Box]:
    """The receptive field of position ``(h, w)`` clipped to the ``image_size`` square, and its
    stride cell (``jump`` pixels around the centre), both in resized-image pixels."""
    cy, cx = field.centre + h * field.jump, field.centre + w * field.jump

    def square(half: float) -> Box:
        return (max(0.0, cx - half), max(0.0, cy - half),
                min(float(image_size), cx + half), min(float(image_size), cy + half))

    return square(field.size / 2), square(field.jump / 2)


def prototype_patch(image: Image.Image, field: ReceptiveField, h: int, w: int, *,
                    image_size: int, out_size: int = 112,
                    outline: str = "#ff2d55") -> Image.Image:
    """The patch of ``image`` (original size) that position ``(h, w)`` of its filter map sees,
    scaled to fit ``out_size``, with the stride cell outlined.

    The boxes are computed in the ``image_size`` square the network saw and scaled back to the
    original width and height.
    """
    field_box, cell = patch_boxes(field, h, w, image_size)
    sx, sy = image.width / image_size, image.height / image_size
    left, top, right, bottom = (field_box[0] * sx, field_box[1] * sy, field_box[2] * sx,
                                field_box[3] * sy)
    crop = image.crop((round(left), round(top), max(round(right), round(left) + 1),
                       max(round(bottom), round(top) + 1)))
    scale = out_size / max(crop.width, crop.height)
    crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))),
                       Image.Resampling.BILINEAR).convert("RGB")
    draw = ImageDraw.Draw(crop)
    box = ((cell[0] * sx - left) * scale, (cell[1] * sy - top) * scale,
           (cell[2] * sx - left) * scale - 1, (cell[3] * sy - top) * scale - 1)
    draw.rectangle(box, outline=outline, width=2)
    return crop
