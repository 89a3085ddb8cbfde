"""The ``goggles`` command line: no abbreviated options, and a mistyped option names the
closest real one."""

from __future__ import annotations

import pytest

from goggles.cli import _parser, main


@pytest.mark.parametrize("argv, typo, meant", [
    (["run", "src", "--num-class", "2", "--output", "out"], "--num-class", "--num-classes"),
    (["run", "src", "--num-classes", "2", "--output", "out", "--shard", "3"], "--shard",
     "--shards"),
    (["export", "out", "--format", "csv", "--output", "dest", "--min-conf", "0.5"],
     "--min-conf", "--min-confidence"),
    (["train", "out", "--hold", "0.2"], "--hold", "--holdout"),
])
def test_an_abbreviated_or_mistyped_option_is_an_error_naming_the_real_one(
        argv: list[str], typo: str, meant: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{typo} is not an option" in error
    assert f"did you mean {meant}?" in error


def test_every_parser_refuses_abbreviations() -> None:
    parser = _parser()
    subparsers = [action for action in parser._actions if action.choices
                  and isinstance(action.choices, dict)]
    assert subparsers
    parsers = [parser, *subparsers[0].choices.values()]
    assert len(parsers) > 5
    assert all(not each.allow_abbrev for each in parsers)


def test_the_full_option_still_parses() -> None:
    args = _parser().parse_args(["run", "src", "--num-classes", "2", "--output", "out"])
    assert args.num_classes == 2
    assert args.output_uri == "out"
