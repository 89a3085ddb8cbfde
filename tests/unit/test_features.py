"""Prototype selection (paper §3.1) and preprocessing."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from PIL import Image

from goggles.features.extraction import preprocess
from goggles.features.prototypes import select_prototypes
from goggles.io.artifacts import Prototypes


def test_top_channels_their_argmax_and_duplicates_dropped() -> None:
    maps = np.zeros((1, 4, 2, 3), dtype=np.float32)
    maps[0, 0, 1, 2] = 9.0  # channel 0 peaks at (1, 2)
    maps[0, 1, 1, 2] = 8.0  # channel 1 peaks at the same place: a duplicate
    maps[0, 2, 0, 0] = 7.0  # channel 2 peaks at (0, 0)
    maps[0, 3, 0, 1] = 1.0  # channel 3 is weakest: not in the top 3
    protos = select_prototypes(maps, np.array([42]), top_k=3)
    assert len(protos) == 2
    assert protos.image_id.tolist() == [42, 42]
    assert list(zip(protos.h.tolist(), protos.w.tolist(), strict=True)) == [(1, 2), (0, 0)]
    assert protos.channel.tolist() == [0, 2]
    np.testing.assert_array_equal(protos.vectors[0], maps[0, :, 1, 2])
    np.testing.assert_array_equal(protos.vectors[1], maps[0, :, 0, 0])


def test_at_most_top_k_per_image_and_zero_maps_give_none() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((3, 32, 7, 7)).astype(np.float32)
    maps[1] = 0.0
    protos = select_prototypes(maps, np.array([0, 1, 2]), top_k=5)
    counts = np.bincount(protos.image_id, minlength=3)
    assert counts[1] == 0
    assert 1 <= counts[0] <= 5 and 1 <= counts[2] <= 5
    # positions are unique within an image
    for image in (0, 2):
        where = protos.image_id == image
        pairs = set(zip(protos.h[where].tolist(), protos.w[where].tolist(), strict=True))
        assert len(pairs) == where.sum()


def test_prototypes_parquet_round_trip() -> None:
    rng = np.random.default_rng(1)
    protos = select_prototypes(rng.random((4, 8, 3, 3)).astype(np.float32), np.arange(4), 3)
    table = protos.to_table()
    assert table.schema.field("vector").type == pa.list_(pa.float32(), 8)
    back = Prototypes.from_table(table)
    np.testing.assert_array_equal(back.vectors, protos.vectors)
    np.testing.assert_array_equal(back.image_id, protos.image_id)
    assert table["prototype_id"].to_pylist() == list(range(len(protos)))


def test_preprocess_resizes_and_normalises() -> None:
    image = Image.new("RGB", (300, 150), (124, 116, 104))  # ~ the ImageNet mean colour
    tensor = preprocess(image, 224)
    assert tuple(tensor.shape) == (3, 224, 224)
    assert float(tensor.abs().max()) < 0.02
