"""Parameter validation (issue 8): bad values fail before any work, with a message that names
the parameter and says what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from goggles.cli import main
from goggles.config import BACKBONE_CHANNELS, ConfigError
from goggles.features.config import AffinityConfig, ExtractConfig
from goggles.inference.config import InferConfig
from goggles.ingest.config import IngestConfig
from goggles.parameters import RunParameters
from goggles.pipeline import stages
from goggles.pipeline.inprocess import run_inprocess
from goggles.pipeline.wiring import check_parameters
from tests.conftest import small_source


@pytest.mark.parametrize(("make", "message"), [
    (lambda: InferConfig(num_classes=1), r"num_classes must be at least 2, got 1"),
    (lambda: InferConfig(num_classes=0), r"num_classes must be at least 2"),
    (lambda: InferConfig(method="magic"),
     r"unknown method 'magic'; choose one of graph-em, em, kmeans"),
    (lambda: InferConfig(max_iter=0), r"max_iter must be at least 1"),
    (lambda: InferConfig(seed=-1), r"seed must be at least 0, got -1"),
    (lambda: InferConfig(tol=0.0), r"tol must be positive"),
    (lambda: ExtractConfig(backbone="resnet9000"),
     r"unknown backbone 'resnet9000'; give one of vgg16, mobilenet_v2, torchvision:<arch>, "
     r"timm:<arch>, open_clip:<arch>:<pretrained tag>, hf:<model id>"),
    (lambda: ExtractConfig(backbone="vgg16", top_k=513),
     r"top_k=513 exceeds the 512 channels of vgg16's filter map; use top_k <= 512"),
    (lambda: ExtractConfig(backbone="mobilenet_v2", top_k=1281),
     r"top_k=1281 exceeds the 1280 channels of mobilenet_v2's filter map; use top_k <= 1280"),
    (lambda: ExtractConfig(top_k=0), r"top_k must be at least 1"),
    (lambda: ExtractConfig(device="tpu"), r"unknown device 'tpu'; choose one of auto, cpu"),
    (lambda: AffinityConfig(num_shards=-1), r"num_shards must be at least 0"),
    (lambda: AffinityConfig(dtype="int8"), r"unknown dtype 'int8'; choose one of float32"),
    (lambda: IngestConfig(extensions=("jpg",)), r"extensions must start with a dot"),
    (lambda: IngestConfig(max_pixels=0), r"max_pixels must be positive"),
    (lambda: InferConfig.from_dict({"num_clases": 3}), r"unknown parameter\(s\) \['num_clases'\]"),
])
def test_bad_config_values_name_the_fix(make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=message):
        make()


def test_top_k_at_the_channel_count_is_allowed() -> None:
    assert ExtractConfig(backbone="vgg16", top_k=512).top_k == 512
    assert ExtractConfig(backbone="mobilenet_v2", top_k=1280).top_k == 1280


def test_channel_counts_match_the_backbones() -> None:
    from goggles.features.backbones import SPECS

    assert BACKBONE_CHANNELS == {name: spec.channels for name, spec in SPECS.items()}


def test_run_parameters_validate_every_stage_config(tmp_path: Path) -> None:
    base = {"source_uri": str(tmp_path / "in"), "output_uri": str(tmp_path / "out")}
    with pytest.raises(ConfigError, match="num_classes must be at least 2"):
        check_parameters(RunParameters(num_classes=1, **base))
    with pytest.raises(ConfigError, match="exceeds the 512 channels"):
        check_parameters(RunParameters(num_classes=2, top_k=600, **base))
    with pytest.raises(ConfigError, match="unknown backbone"):
        check_parameters(RunParameters(num_classes=2, backbone="alexnet", **base))
    check_parameters(RunParameters(num_classes=2, **base))


# -- output inside the source -----------------------------------------------------------------

@pytest.mark.parametrize(("source", "output"), [
    ("{t}/data", "{t}/data"),
    ("{t}/data", "{t}/data/"),
    ("{t}/data/", "{t}/data/out"),
    ("{t}/data", "{t}/data/a/b/out"),
    ("{t}/data", "file://{t}/data/out"),
    ("file://{t}/data", "{t}/data/out"),
    ("{t}/data", "{t}/other/../data/out"),
    ("{t}/data", "{t}/link-to-data/out"),
    ("gs://bucket/images", "gs://bucket/images/out"),
    ("gs://bucket/images", "gcs://bucket/images/run-1"),
    ("s3://bucket/images/", "s3://bucket/images//out"),
    ("memory://bucket/images", "memory://bucket/./images/out"),
])
def test_output_inside_the_source_is_refused(tmp_path: Path, source: str, output: str) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "link-to-data").symlink_to(tmp_path / "data", target_is_directory=True)
    params = RunParameters(source_uri=source.format(t=tmp_path),
                           output_uri=output.format(t=tmp_path), num_classes=2)
    with pytest.raises(ConfigError, match="is inside the source .*Choose an output outside"):
        check_parameters(params)


@pytest.mark.parametrize(("source", "output"), [
    ("{t}/data", "{t}/data-out"),
    ("{t}/data", "{t}/out"),
    ("{t}/data/images", "{t}/data/out"),
    ("gs://bucket/images", "gs://bucket/images-labels"),
    ("gs://bucket/images", "s3://bucket/images/out"),
])
def test_output_beside_the_source_is_allowed(tmp_path: Path, source: str, output: str) -> None:
    check_parameters(RunParameters(source_uri=source.format(t=tmp_path),
                                   output_uri=output.format(t=tmp_path), num_classes=2))


# -- limits known only after ingest: fail before extraction ----------------------------------

def test_more_classes_than_accepted_images_fails_after_ingest(tmp_path: Path) -> None:
    source = small_source(tmp_path / "in", n_good=3)
    out = tmp_path / "out"
    with pytest.raises(stages.StageError,
                       match=r"only 3 images were accepted, fewer than num_classes=4; lower "
                             r"num_classes or add images"):
        run_inprocess(RunParameters(source_uri=str(source), output_uri=str(out), num_classes=4,
                                    backbone="mobilenet_v2"))
    assert (out / "manifest.parquet").is_file()  # the reasons are there to read
    assert not (out / "artifacts" / "features").exists()  # no backbone was run


def test_more_shards_than_images_fails_before_extraction(tmp_path: Path) -> None:
    source = small_source(tmp_path / "in", n_good=3)
    out = tmp_path / "out"
    with pytest.raises(stages.StageError,
                       match=r"num_shards=5 exceeds the 3 accepted images; use at most 3 shards"):
        run_inprocess(RunParameters(source_uri=str(source), output_uri=str(out), num_classes=2,
                                    num_shards=5, backbone="mobilenet_v2"))
    assert not (out / "artifacts" / "features").exists()


def test_dev_labels_of_rejected_images_only_fail_before_extraction(tmp_path: Path) -> None:
    """The up-front check sees the listing, where a file ingest will reject still looks like an
    image; after ingest the rows are counted and named as rejected, before any backbone runs."""
    source = small_source(tmp_path / "in", n_good=3)
    dev = tmp_path / "dev.csv"
    dev.write_text(f"uri,label\n{source}/a/broken.jpg,red\nelsewhere/x.png,blue\n")
    out = tmp_path / "out"
    with pytest.raises(stages.StageError) as raised:
        run_inprocess(RunParameters(source_uri=str(source), output_uri=str(out), num_classes=2,
                                    backbone="mobilenet_v2", dev_labels_uri=str(dev)))
    message = str(raised.value)
    assert "no row names an accepted image; 1 of its 2 rows name images that ingest " \
           "rejected, e.g. " in message and "broken.jpg (" in message, message
    assert "1 name no image of the source" in message and "\n" not in message
    assert (out / "manifest.parquet").is_file()
    assert not (out / "artifacts" / "features").exists()  # no backbone was run


# -- the command line ---------------------------------------------------------------------------

def test_cli_reports_a_bad_value_in_one_line(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", str(tmp_path / "in"), "--num-classes", "1",
                 "--output", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert err == "goggles: error: --num-classes: num_classes must be at least 2, got 1\n"


def test_cli_refuses_output_inside_source(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    source = small_source(tmp_path / "in")
    code = main(["run", str(source), "--num-classes", "2", "--output", str(source / "out")])
    assert code == 2
    assert "Choose an output outside the source folder" in capsys.readouterr().err
    assert not (source / "out").exists()


def test_cli_unknown_backbone_lists_the_accepted_forms(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    """A backbone is any model spec, so argparse has no choices: the declaration's check names
    today's two networks and every family's form, in one line, before anything runs."""
    code = main(["run", str(tmp_path), "--num-classes", "2", "--output", str(tmp_path / "o"),
                 "--backbone", "resnet50"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'resnet50'" in err, err
    for form in ("vgg16", "mobilenet_v2", "torchvision:<arch>", "timm:<arch>",
                 "open_clip:<arch>:<pretrained tag>", "hf:<model id>"):
        assert form in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("flag", "value", "choices"), [
    ("--runner", "kubernetes", ("local", "docker", "inprocess")),
])
def test_cli_unknown_choice_lists_the_valid_ones(tmp_path: Path, flag: str, value: str,
                                                 choices: tuple[str, ...],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", str(tmp_path), "--num-classes", "2", "--output", str(tmp_path / "o"),
              flag, value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and value in err
    assert all(choice in err.split("choose from", 1)[1] for choice in choices), err


def test_kfp_runner_refuses_an_unknown_runner(tmp_path: Path) -> None:
    from goggles.kubeflow import runner as kfp_runner

    params = RunParameters(source_uri=str(tmp_path / "in"), output_uri=str(tmp_path / "out"),
                           num_classes=2)
    with pytest.raises(ValueError, match=r"unknown runner 'kubernetes'; choose one of local"):
        kfp_runner.run_pipeline(params, runner="kubernetes")
