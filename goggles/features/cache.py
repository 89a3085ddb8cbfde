"""The feature cache: each image's features, kept across runs so that a rerun over a grown
source computes only the new images (``--feature-cache URI``, pipeline parameter
``feature_cache_uri``; any storage URI goggles reads: a path, ``gs://``, ``s3://`` ...).

An entry is one image's output of one network, keyed by everything that decides it:

* the image's content: the SHA-256 the manifest holds (a renamed or moved file is a hit, a file
  rewritten in place a miss);
* the network: its name, the SHA-256 of its weights as loaded (:func:`weights_digest`), the
  image size, the forward pass's arithmetic (float32, bfloat16 ...) and
  :data:`PREPROCESS_VERSION`, raised whenever decoding or preprocessing changes what a network
  sees.

Layout: ``URI/v1/<kind>-<network>-<digest>/<sha[:2]>/<sha>.npy`` where ``kind`` is ``maps``
(the [C, H, W] float32 filter map, from which prototypes and the network's own bilinear
descriptor are derived), ``descriptor`` (the [D] bilinear descriptor of a second network) or
``pooled`` (a transformer's [D] pooled embedding); ``<network>`` is its file name
(:func:`goggles.config.backbone_file_name`).
Every entry is written under a temporary name and renamed into place (a copy and a delete on
object stores), so two runs sharing a cache never see each other's partial writes; an entry that
cannot be read back as an array of the expected shape, finite, is a miss and is written again.
Entries are never modified, so the cache may be pruned by age or deleted at any time (a run in
progress recomputes what it no longer finds).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from goggles.config import backbone_file_name
from goggles.io import storage

logger = logging.getLogger(__name__)

PREPROCESS_VERSION = 1
"""Raise when decoding, resizing or normalisation change: every entry becomes a miss."""
LAYOUT = "v1"


def weights_digest(model: Any) -> str:
    """SHA-256 (hex) of a module's parameters and buffers as loaded, in name order: the weights
    that produced a feature, whatever file they came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(name.encode())
        digest.update(str(array.dtype).encode() + str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class FeatureCache:
    """One network's entries of one kind in the cache at ``uri`` (see the module docstring).

    Attributes
    ----------
    uri : the cache's root.
    kind : ``maps`` or ``descriptor``.
    network : the backbone's name.
    weights : :func:`weights_digest` of the loaded network.
    image_size : the preprocessing's square side.
    arithmetic : the forward pass's dtype name (``float32``, ``bfloat16`` ...).
    shape : the shape of one entry ([C, H, W] or [D]); entries of another shape are misses.
    preprocess : a family's own preprocessing (:meth:`goggles.features.network.Preprocessing.
        key`); ``""`` for today's two networks, whose keys it leaves as they were.
    """

    uri: str
    kind: str
    network: str
    weights: str
    image_size: int
    arithmetic: str
    shape: tuple[int, ...]
    preprocess: str = ""

    @property
    def namespace(self) -> str:
        """The folder of these entries: readable, and a digest of everything in the key."""
        key = f"{self.network}|{self.weights}|{self.image_size}|{self.arithmetic}|" \
              f"p{PREPROCESS_VERSION}" + (f"|{self.preprocess}" if self.preprocess else "")
        return f"{self.kind}-{backbone_file_name(self.network)}-" \
               f"{hashlib.sha256(key.encode()).hexdigest()[:16]}"

    def path(self, sha256: str) -> str:
        """Where the entry of the image with content hash ``sha256`` lies."""
        if len(sha256) < 16 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"{sha256!r} is not a hex SHA-256 of an image's bytes; the "
                             "manifest's sha256 column keys the cache")
        return storage.join(self.uri, LAYOUT, self.namespace, sha256[:2], f"{sha256}.npy")

    def get(self, sha256: str) -> np.ndarray | None:
        """The entry, or ``None`` when it is missing, partial, corrupt or of another shape."""
        path = self.path(sha256)
        try:
            array = storage.read_npy(path)
        except FileNotFoundError:
            return None
        except Exception as error:  # noqa: BLE001 - a bad entry is a miss, recomputed
            logger.warning("feature cache entry %s is unreadable (%s); recomputing it", path,
                           error)
            return None
        if array.shape != self.shape or array.dtype != np.float32 \
                or not np.isfinite(array).all():
            logger.warning("feature cache entry %s holds a %s %s array, expected %s float32; "
                           "recomputing it", path, array.dtype, array.shape, self.shape)
            return None
        return array

    def put(self, sha256: str, array: np.ndarray) -> None:
        """Write the entry atomically (a temporary name, then renamed into place)."""
        storage.write_npy(np.ascontiguousarray(array, dtype=np.float32), self.path(sha256))

    def misses(self, hashes: list[str]) -> list[int]:
        """Indices of ``hashes`` with no usable entry."""
        return [i for i, sha in enumerate(hashes) if self.get(sha) is None]
