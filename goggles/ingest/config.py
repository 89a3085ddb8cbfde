"""Parameters of the ingest stage."""

from __future__ import annotations

from dataclasses import dataclass

from goggles.config import IMAGE_EXTENSIONS, Config, check
from goggles.parameters import default


@dataclass(frozen=True)
class IngestConfig(Config):
    """Parameters of the ingest stage.

    Attributes
    ----------
    extensions : file name suffixes listed as images (case-insensitive); other files are ignored.
    max_pixels : images with more pixels are rejected as decompression bombs.
    max_bytes : files larger than this are rejected without being read.
    labels_from_folders : take ground-truth labels from the first folder level (ImageFolder).
    follow_symlinks : read files and folders that symlinks inside the source lead to outside it;
        off, such a file is a rejected row and such a folder is skipped.
    verify : reuse of an ingest (resume, the pipeline's listing key) decided by the content of
        every local file, not only of those whose metadata changed (:mod:`goggles.io.listing`).
    """

    extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    max_pixels: int = 64_000_000
    max_bytes: int = 256 * 1024 * 1024
    labels_from_folders: bool = True
    follow_symlinks: bool = default("follow_symlinks")
    verify: bool = default("verify")

    def __post_init__(self) -> None:
        check(len(self.extensions) > 0, "extensions must name at least one suffix, e.g. '.jpg'")
        check(all(e.startswith(".") for e in self.extensions),
              f"extensions must start with a dot, got {self.extensions}")
        check(self.max_pixels > 0, f"max_pixels must be positive, got {self.max_pixels}")
        check(self.max_bytes > 0, f"max_bytes must be positive, got {self.max_bytes}")
