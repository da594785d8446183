"""The CLI follows Click/Typer conventions: --version, defaults shown, flags as flags, examples, documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer

import dgmeta
from dgmeta.cli.main import app, main

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands(command=None, path=()):
    """(path, click command) for every command and sub-command, depth first."""
    command = command or typer.main.get_command(app)
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


LEAVES = [path for path, command in _commands() if not getattr(command, "commands", None)]


def _help(path: tuple[str, ...], capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "300")
    try:
        main([*path, "--help"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    return capsys.readouterr().out


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    assert capsys.readouterr().out.strip() == f"dgmeta {dgmeta.__version__}"


def test_every_command_is_covered():
    assert {" ".join(p) for p in LEAVES} >= {"run", "sweep", "compare", "fewshot", "retrain", "data info", "data verify",
                                              "data download", "schedule install", "schedule list", "schedule remove"}


@pytest.mark.parametrize("path", LEAVES, ids=lambda p: "-".join(p))
def test_options_declare_defaults_and_flags_have_negations(path):
    command = dict(_commands())[path]
    for param in command.params:
        if param.param_type_name != "option" or param.is_eager:
            continue
        name = param.opts[0]
        if getattr(param, "is_flag", False):
            assert param.secondary_opts, f"{' '.join(path)} {name}: a boolean should be --x/--no-x"
        elif not param.required:
            assert isinstance(param.show_default, str) or param.default is not None, f"{' '.join(path)} {name} shows no default"


@pytest.mark.parametrize("path", LEAVES, ids=lambda p: "-".join(p))
def test_help_shows_defaults_examples_and_no_bool_values(path, capsys, monkeypatch):
    text = _help(path, capsys, monkeypatch)
    command = dict(_commands())[path]
    options = [p for p in command.params if p.param_type_name == "option" and not p.is_eager and not p.required]
    assert "<bool>" not in text
    assert text.count("[default:") >= len(options), f"{' '.join(path)}: some option shows no default"
    assert re.search(r"Examples?:", text) and f"dgmeta {' '.join(path)}" in text


def test_flags_parse_both_ways(tmp_path, capsys):
    """--no-x is accepted where --x is (the flag form users know from Click tools)."""
    with pytest.raises(SystemExit) as info:
        main(["run", "no-such-dataset", "--no-fewshot", "--quiet", "--data-root", str(tmp_path)])
    assert info.value.code != 0 and "no such option" not in capsys.readouterr().err.lower()


def test_readme_lists_every_command():
    text = README.read_text()
    for path in LEAVES:
        assert f"dgmeta {' '.join(path)}" in text, f"README does not show `dgmeta {' '.join(path)}`"
