"""Tests of the `uepjax` command line: subcommands, errors and exit codes."""

import sys
import types

import pytest

from uepjax import cli


def test_every_subcommand_is_registered():
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"sweep", "plot", "tune", "train"} <= set(commands)


def test_a_bad_config_exits_with_the_file_and_the_key(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('experiment = "grid"\n[axes]\nfield = []\n')
    assert cli.main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "bad.toml" in error and "axes.field must not be empty" in error
    assert not (tmp_path / "out").exists()


def test_plot_refuses_folders_without_results(tmp_path, capsys):
    assert cli.main(["plot", str(tmp_path / "missing")]) == 2
    assert "is not a results folder" in capsys.readouterr().err
    assert cli.main(["plot", str(tmp_path)]) == 2
    assert "no results.csv" in capsys.readouterr().err


def test_unknown_sweep_options_are_refused():
    with pytest.raises(SystemExit) as stop:
        cli.main(["sweep", "x.toml", "--out", "o", "--colour"])
    assert stop.value.code == 2


def test_a_missing_module_gives_a_clear_message(monkeypatch, capsys):
    monkeypatch.setitem(
        cli.EXTERNAL, "train", (("uepjax.no_such_module",), "train a network")
    )
    assert cli.main(["train", "--epochs", "3"]) == 2
    error = capsys.readouterr().err
    assert "uepjax train: this installation has no train command yet" in error
    assert "uepjax.no_such_module" in error


def test_external_subcommands_get_the_rest_of_the_line(monkeypatch):
    seen = {}
    module = types.ModuleType("uepjax_fake_tune")

    def add_arguments(parser):
        parser.add_argument("config")
        parser.add_argument("--out", required=True)

    def run(args, say):
        assert say is cli.say
        seen.update(vars(args))
        return 0

    module.add_arguments, module.run = add_arguments, run
    monkeypatch.setitem(sys.modules, "uepjax_fake_tune", module)
    monkeypatch.setitem(cli.EXTERNAL, "tune", (("uepjax_fake_tune",), "tune"))
    assert cli.main(["tune", "sweeps/tune-paper.toml", "--out", "results"]) == 0
    assert seen == {"config": "sweeps/tune-paper.toml", "out": "results"}
