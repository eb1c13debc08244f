"""The command line's shared spellings: global options anywhere, ``--version``, one name per recurring option
(``--out FILE``, ``--json`` as a flag, ``--until-idle``) with the old spellings still accepted."""

from __future__ import annotations

import argparse
import logging
import tomllib
from pathlib import Path

import pytest

from lineguard.analytics import cookbook
from lineguard.cli import build_parser, main

REPO_ROOT = Path(__file__).resolve().parents[1]


def _subcommand_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(path, parser) of every subcommand, nested ones (``stack up``, ``bench engine``) included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _subcommand_parsers(sub, (*path, name))


def test_every_subcommand_takes_the_global_options() -> None:
    found = dict(_subcommand_parsers(build_parser()))
    assert {("demo",), ("stack", "up"), ("bench", "engine"), ("eval",), ("tail",), ("sink",)} <= set(found)
    for path, sub in found.items():
        assert {"--config", "--log-level"} <= set(sub._option_string_actions), path


@pytest.mark.parametrize("argv, config, level", [
    (["--log-level", "DEBUG", "demo"], None, "DEBUG"),
    (["demo", "--log-level", "DEBUG"], None, "DEBUG"),
    (["demo", "--config", "c.yaml"], "c.yaml", None),
    (["stack", "up", "--config", "c.yaml", "--log-level", "ERROR"], "c.yaml", "ERROR"),
    (["--config", "before.yaml", "stack", "status", "--log-level", "WARNING"], "before.yaml", "WARNING"),
    # Given twice, the one nearer the end wins, as with any repeated option.
    (["--log-level", "INFO", "demo", "--log-level", "ERROR"], None, "ERROR"),
    (["demo"], None, None),
])
def test_global_options_before_or_after_the_subcommand(argv: list[str], config: str | None,
                                                        level: str | None) -> None:
    args = build_parser().parse_args(argv)
    assert (args.config, args.log_level) == (config, level)


def test_config_and_log_level_after_the_subcommand_take_effect(tmp_path: Path, capsys) -> None:
    config = tmp_path / "plant.yaml"
    config.write_text("log_level: ERROR\nsinks:\n  clickhouse:\n    database: plant7_quality\n")
    query = next(iter(cookbook.QUERIES))
    root = logging.getLogger()
    previous = root.level
    try:
        assert main(["report", "--sql", query, "--config", str(config)]) == 0
        assert "plant7_quality." in capsys.readouterr().out  # the SQL names the configured database
        assert root.level == logging.ERROR  # the file's log level
        assert main(["report", "--sql", query, "--config", str(config), "--log-level", "DEBUG"]) == 0
        assert root.level == logging.DEBUG  # the option beats the file
    finally:
        root.setLevel(previous)
    assert main(["report", "--list", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml does not exist" in capsys.readouterr().err


def test_version_is_the_installed_package_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out.strip() == f"lineguard {declared}"


def test_train_keeps_its_own_version_option() -> None:
    args = build_parser().parse_args(["train", "--model", "baseline", "--data", "d", "--out", "m", "--version", "7"])
    assert (args.version, args.out) == ("7", "m")


@pytest.mark.parametrize("argv", [
    ["eval", "--model", "m", "--data", "d"],
    ["bench", "engine", "--model", "m"],
    ["bench", "pipeline"],
    ["bench", "fit", "--data", "d"],
    ["bench", "anomalib", "--data", "d"],
])
def test_output_file_is_out_and_json_file_is_a_deprecated_alias(argv: list[str], capsys) -> None:
    parser = build_parser()
    assert parser.parse_args([*argv, "--out", "r.json"]).out == "r.json"
    assert parser.parse_args(argv).out is None
    assert capsys.readouterr().err == ""
    assert parser.parse_args([*argv, "--json", "old.json"]).out == "old.json"
    assert "--json is deprecated, use --out FILE" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["sink", "clickhouse"], ["sink", "heatmaps"], ["tail", "--line", "press1"]])
def test_exit_when_idle_is_until_idle_and_idle_exit_is_a_deprecated_alias(argv: list[str], capsys) -> None:
    parser = build_parser()
    assert parser.parse_args([*argv, "--until-idle", "2.5"]).until_idle == 2.5
    assert parser.parse_args(argv).until_idle is None
    assert capsys.readouterr().err == ""
    assert parser.parse_args([*argv, "--idle-exit", "4"]).until_idle == 4.0
    assert "--idle-exit is deprecated, use --until-idle SECONDS" in capsys.readouterr().err


def test_json_is_a_print_json_flag_where_it_prints() -> None:
    parser = build_parser()
    assert parser.parse_args(["tail", "--line", "press1", "--json"]).json is True
    assert parser.parse_args(["stack", "status", "--json"]).json is True
    assert parser.parse_args(["stack", "status"]).json is False


@pytest.mark.parametrize("argv, hidden", [
    (["eval", "--help"], "--json"), (["bench", "engine", "--help"], "--json"),
    (["tail", "--help"], "--idle-exit"), (["sink", "--help"], "--idle-exit"),
])
def test_deprecated_spellings_are_not_in_the_help(argv: list[str], hidden: str, capsys) -> None:
    with pytest.raises(SystemExit):
        main(argv)
    shown = capsys.readouterr().out
    assert "--log-level" in shown and hidden not in shown
