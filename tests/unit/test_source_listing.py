"""A run lists its source once (issue 27, the house): the checks, the resume keys, ingest and
the record of the finished run share one listing (:class:`goggles.io.listing.SourceListing`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from goggles.cli import main
from goggles.io import listing
from goggles.parameters import RunParameters
from tests.conftest import small_source


@pytest.fixture
def listings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The source URIs :func:`goggles.io.listing.list_files` was asked for, in order (the real
    listing runs: the module attribute every caller goes through is wrapped)."""
    asked: list[str] = []
    real = listing.list_files

    def counted(root_uri: str, *args: Any, **kwargs: Any) -> list[listing.ListedFile]:
        asked.append(root_uri)
        return real(root_uri, *args, **kwargs)

    monkeypatch.setattr(listing, "list_files", counted)
    return asked


def dev_labels(source: Path, path: Path) -> Path:
    rows = [f"{file},{file.parent.name}" for file in sorted(source.rglob("*.png"))[:2]]
    path.write_text("uri,label\n" + "\n".join(rows) + "\n")
    return path


def test_goggles_run_in_process_lists_the_source_once(tmp_path: Path,
                                                      listings: list[str]) -> None:
    """With dev labels (the checks read the listing to match them) and --break-lock (the CLI
    checks before the run does), a first run and a rerun that reuses every stage each list the
    source once, and ingest reads every listed file."""
    source = small_source(tmp_path / "in", n_good=6, size=24)
    out = tmp_path / "out"
    argv = ["run", str(source), "--output", str(out), "--runner", "inprocess",
            "--num-classes", "2", "--method", "kmeans", "--backbone", "mobilenet_v2",
            "--descriptor-backbone", "none", "--top-k", "2", "--device", "cpu",
            "--dev-labels", str(dev_labels(source, tmp_path / "dev.csv")), "--break-lock"]
    assert main(argv) == 0
    assert listings == [str(source)]
    manifest = pq.read_table(out / "manifest.parquet")
    assert manifest.num_rows == 7  # six images and the broken file: all of the listing
    listings.clear()
    assert main(argv) == 0  # every stage reused: the ingest record is checked, not redone
    assert listings == [str(source)]


def test_the_resume_keys_reuse_the_runs_listing(tmp_path: Path, listings: list[str]) -> None:
    """What the Kubeflow runner asks before and after its pipeline (is the extraction reusable,
    record the finished run) reads the listing its checks made; without one each lists anew."""
    from goggles.pipeline.inprocess import extraction_reusable, run_inprocess
    from goggles.pipeline.wiring import check_run

    source = small_source(tmp_path / "in", n_good=4, size=24, bad=False)
    params = RunParameters(source_uri=str(source), output_uri=str(tmp_path / "out"),
                           num_classes=2, method="kmeans", backbone="mobilenet_v2",
                           descriptor_backbone="none", top_k=2, device="cpu")
    run_inprocess(params)
    listings.clear()
    run = listing.SourceListing(str(source))
    configs = check_run(params, source=run)
    assert extraction_reusable(params, configs, source=run)
    assert extraction_reusable(params, configs, source=run)
    assert listings == [str(source)]
    assert extraction_reusable(params, configs)  # no run listing given: its own
    assert listings == [str(source)] * 2


def test_a_listing_of_another_source_is_refused(tmp_path: Path) -> None:
    from goggles.pipeline.inprocess import run_inprocess

    source = small_source(tmp_path / "in", n_good=2, bad=False)
    params = RunParameters(source_uri=str(source), output_uri=str(tmp_path / "out"))
    with pytest.raises(ValueError, match="is not of this run's source"):
        run_inprocess(params, source=listing.SourceListing(str(tmp_path)))
