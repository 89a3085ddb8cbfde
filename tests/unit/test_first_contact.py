"""A new user's first mistakes: one line naming the problem and the fix, a non-zero exit, and
nothing started — no pipeline, no output folder. ``-v`` adds the traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from goggles.cli import main


def _image_folder(folder: Path) -> Path:
    (folder / "a").mkdir(parents=True)
    Image.new("RGB", (16, 16), (200, 10, 10)).save(folder / "a" / "x.png")
    return folder


def test_a_missing_source_is_one_line_without_a_traceback(tmp_path: Path) -> None:
    """As a user types it: the installed command, a path that does not exist."""
    done = subprocess.run([sys.executable, "-m", "goggles.cli", "run", "/no/such/dir",
                           "--num-classes", "2", "--output", "out"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert 1 <= len(lines) <= 3, lines
    assert "/no/such/dir" in lines[-1] and "does not exist" in lines[-1]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "goggles.cli", "-v", "run", "/no/such/dir",
                           "--num-classes", "2", "--output", "out"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "ConfigError" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("goggles: error: source /no/such/dir")


@pytest.mark.parametrize(("arguments", "expected"), [
    (["{empty}", "--num-classes", "2", "--output", "{out}"],
     "holds no image files (looked for .jpg"),
    (["{file}", "--num-classes", "2", "--output", "{out}"],
     "is a file, not a folder; give the folder that holds the images"),
    (["{images}", "--num-classes", "2", "--output", "{images}/labels"],
     "--output: output '{images}/labels' is inside the source '{images}'"),
    (["{images}", "--num-classes", "2", "--output", "{out}", "--top-k", "0"],
     "--top-k: top_k must be at least 1, got 0"),
    (["{images}", "--num-classes", "1", "--output", "{out}"],
     "--num-classes: num_classes must be at least 2, got 1"),
    (["{images}", "--num-classes", "2", "--output", "{out}", "--shards", "-1"],
     "--shards: num_shards must be at least 0, got -1"),
    (["{images}", "--num-classes", "2", "--output", "{out}", "--shards", "5000"],
     "--shards: num_shards must be at most 1024, got 5000"),
    (["{images}", "--num-classes", "2", "--output", "{out}", "--max-iter", "0"],
     "--max-iter: max_iter must be at least 1, got 0"),
    (["{images}", "--num-classes", "2", "--output", "{out}", "--dev-labels", "{tmp}/dev.csv"],
     "--dev-labels: dev labels {tmp}/dev.csv does not exist; check the path"),
    (["{images}", "--num-classes", "2", "--output", "{out}", "--weights", "{tmp}/w.pth"],
     "--weights: weights {tmp}/w.pth does not exist; check the path"),
])
def test_first_contact_errors_name_the_problem_and_the_fix(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str],
        expected: str) -> None:
    images = _image_folder(tmp_path / "images")
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.png").write_bytes(b"not a folder")
    names = {"tmp": tmp_path, "images": images, "empty": tmp_path / "empty",
             "file": tmp_path / "file.png", "out": tmp_path / "out"}
    code = main(["run", *(a.format(**names) for a in arguments), "--runner", "local"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("goggles: error: "), err
    assert expected.format(**names) in err
    assert not (tmp_path / "out").exists() and not (images / "labels").exists()


def test_an_unknown_choice_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "x", "--num-classes", "2", "--output", "o", "--method", "magic"])
    assert exited.value.code == 2
    assert "invalid choice: 'magic'" in capsys.readouterr().err


@pytest.mark.parametrize(("content", "expected"), [
    ("path,name\nx.png,a\n", "lack column(s) ['label', 'uri']"),
    ('uri,label\n"unclosed,a\n', "are not a CSV or Parquet table with columns uri,label"),
    ("uri,label\nelsewhere/nothing.png,a\n", "none of the 1 rows of dev labels"),
    ("uri,label\na/x.png,red\nb/y.png,green\nc/z.png,blue\n",
     "name 3 classes ('blue', 'green', 'red') but the run has num_classes=2"),
    ("uri,label\na/x.png,red\nb/y.png,\n", "1 of 2 rows have an empty label"),
    ("uri,label\na/x.png,red\n,blue\n", "1 of 2 rows have an empty uri"),
    ("uri,label\na/x.png,red\nb/y.png,blue\na/x.png,blue\n",
     "label 1 image(s) twice with different classes, e.g. a/x.png as 'blue' and 'red'"),
])
def test_a_wrong_dev_labels_file_fails_before_anything_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, expected: str) -> None:
    images = _image_folder(tmp_path / "images")
    dev = tmp_path / "dev.csv"
    dev.write_text(content)
    code = main(["run", str(images), "--num-classes", "2", "--output", str(tmp_path / "out"),
                 "--dev-labels", str(dev), "--runner", "inprocess"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("goggles: error: --dev-labels: ")
    assert expected in err, err
    assert "unclosed" not in err  # the file's content is never echoed
    assert not (tmp_path / "out").exists()


def test_a_huge_dev_labels_file_is_counted_not_logged_row_by_row(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from goggles.parameters import RunParameters
    from goggles.pipeline.wiring import check_inputs

    images = _image_folder(tmp_path / "images")
    dev = tmp_path / "dev.csv"
    rows = [f"{images}/a/x.png,red"] + [f"elsewhere/{i}.png,blue" for i in range(300_000)]
    dev.write_text("uri,label\n" + "\n".join(rows) + "\n")
    with caplog.at_level("INFO"):
        check_inputs(RunParameters(source_uri=str(images), output_uri=str(tmp_path / "out"),
                                   num_classes=2, dev_labels_uri=str(dev)))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) <= 3, messages[:5]
    assert any("1 of 300001 rows match an image; 300000 do not" in m for m in messages), messages


def test_a_parquet_of_twenty_million_rows_is_refused_at_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A few hundred KB of Parquet (run-length encoded) can hold 20 million rows: they are
    counted from the file's footer before a column is decoded, under a second."""
    import time

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = _image_folder(tmp_path / "images")
    rows = 20_000_000
    zeros = pa.array(np.zeros(rows, dtype=np.int32))
    table = pa.table({"uri": pa.DictionaryArray.from_arrays(zeros, pa.array([f"{images}/a/x.png"])),
                      "label": pa.DictionaryArray.from_arrays(zeros, pa.array(["red"]))})
    dev = tmp_path / "dev.parquet"
    pq.write_table(table, dev, compression="zstd")
    del table, zeros
    assert dev.stat().st_size < 2**20 < 64 * 2**20  # well under the byte cap
    started = time.perf_counter()
    code = main(["run", str(images), "--num-classes", "2", "--output", str(tmp_path / "out"),
                 "--dev-labels", str(dev), "--runner", "inprocess"])
    seconds = time.perf_counter() - started
    err = capsys.readouterr().err
    assert code == 2 and "hold 20,000,000 rows, more than the 1,000,000" in err, err
    assert err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    print(f"refused in {seconds:.3f} s")  # figures for the record; no timed assertion
