"""Prototype selection (paper §3.1, eq. 2): each image's prototypes are the C-vectors at the
argmax positions of its ``top_k`` channels with the highest global max, repeated positions kept
once; :mod:`goggles.features.budget` caps their number for large datasets."""

from __future__ import annotations

import numpy as np

from goggles.io.artifacts import Prototypes


def select_prototypes(maps: np.ndarray, image_ids: np.ndarray, top_k: int) -> Prototypes:
    """Pick prototypes from a batch of filter maps (paper §3.1, eq. 2).

    Parameters
    ----------
    maps : [n, C, H, W] float array of filter maps.
    image_ids : [n] ids of those images.
    top_k : channels per image ranked by global max pooling (ties broken by channel index).

    Returns
    -------
    Prototypes with at most ``top_k`` per image: for each top channel, the C-vector at the
    position of its maximum (first position on ties); repeated positions are kept once, in
    channel rank order. Positions whose vector is all zero are dropped (they have no direction,
    so their cosine affinity is undefined).
    """
    n, channels, height, width = maps.shape
    top_k = min(top_k, channels)
    flat = maps.reshape(n, channels, height * width)
    positions = flat.argmax(axis=2)  # [n, C], first max on ties
    peaks = np.take_along_axis(flat, positions[:, :, None], axis=2)[:, :, 0]  # [n, C]
    # stable descending sort: highest peak first, lower channel index first on ties
    order = np.argsort(-peaks, axis=1, kind="stable")[:, :top_k]  # [n, k]
    chosen = np.take_along_axis(positions, order, axis=1)  # [n, k]
    rows, hs, ws, chans = [], [], [], []
    for row in range(n):
        seen: set[int] = set()
        for rank in range(top_k):
            position = int(chosen[row, rank])
            if position in seen:
                continue
            seen.add(position)
            rows.append(row)
            hs.append(position // width)
            ws.append(position % width)
            chans.append(int(order[row, rank]))
    rows_a = np.asarray(rows, dtype=np.int64)
    hs_a = np.asarray(hs, dtype=np.int64)
    ws_a = np.asarray(ws, dtype=np.int64)
    vectors = maps[rows_a, :, hs_a, ws_a].astype(np.float32) if len(rows_a) else \
        np.zeros((0, channels), np.float32)
    keep = np.linalg.norm(vectors, axis=1) > 0 if len(rows_a) else np.zeros(0, bool)
    return Prototypes(
        image_id=np.asarray(image_ids, dtype=np.int64)[rows_a][keep],
        h=hs_a[keep], w=ws_a[keep],
        channel=np.asarray(chans, dtype=np.int64)[keep],
        vectors=vectors[keep],
    )
