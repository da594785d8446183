"""Text from the user (paths, URIs, calendar values) cannot add a line to a crontab or a directive to
a systemd unit: control characters are refused before anything is written, and what systemd would
reinterpret (quotes, backslashes, $, %) is escaped so that the unit runs exactly the given words."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess

import pytest

from dgmeta.cli.main import main
from dgmeta.errors import ConfigError
from dgmeta.orchestration import schedule

SPEC = "dataset: toy\nexperiment: sched\nregister: {model_name: toy}\n"
EVIL = "* * * * * touch /tmp/pwned"


def spec_at(folder, name: str):
    path = folder / name
    path.write_text(SPEC)
    return path


@pytest.mark.parametrize("name, char", [
    ("toy\n* * * * * touch pwned.yaml", "U+000A"),
    ("toy\r.yaml", "U+000D"),
    ("toy\x00x.yaml".replace("\x00", "\x1b"), "U+001B"),
    ("toy\u2028x.yaml", "U+2028"),
    ("toy\x85x.yaml", "U+0085"),
])
def test_pipeline_path_with_control_characters_is_refused_for_crontab_and_systemd(tmp_path, capsys, name, char):
    spec = spec_at(tmp_path, name)
    crontab = tmp_path / "crontab"
    crontab.write_text("MAILTO=me\n")
    for extra in (["--crontab-file", str(crontab)], ["--systemd", "--unit-dir", str(tmp_path / "units")]):
        with pytest.raises(SystemExit) as info:
            main(["schedule", "install", str(spec), "--cron", "@daily", *extra])
        err = capsys.readouterr().err
        assert info.value.code == 2
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert err.startswith("error: pipeline path ") and f"contains {char}" in err
    assert crontab.read_text() == "MAILTO=me\n"
    assert not (tmp_path / "units").exists()


@pytest.mark.parametrize("option, value, what", [
    ("--log-file", f"/tmp/log\n{EVIL}", "log file"),
    ("--tracking-uri", f"sqlite:////tmp/x.db\n{EVIL}", "tracking URI"),
    ("--tracking-uri", "http://host:5000/\rExecStartPre=/bin/sh", "tracking URI"),
    ("--cron", f"@daily\n{EVIL}", "cron expression"),
])
def test_option_values_with_line_breaks_are_refused(tmp_path, capsys, option, value, what):
    spec = spec_at(tmp_path, "toy.yaml")
    crontab = tmp_path / "crontab"
    argv = ["schedule", "install", str(spec), "--crontab-file", str(crontab)]
    if option != "--cron":
        argv += ["--cron", "@daily"]
    with pytest.raises(SystemExit) as info:
        main([*argv, option, value])
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {what} ")
    assert not crontab.exists()


@pytest.mark.parametrize("value", ["Mon *-*-01 03:00:00\nExecStartPre=/bin/sh -c evil", "daily\r\n[Service]"])
def test_on_calendar_with_a_line_break_is_refused(tmp_path, capsys, value):
    spec = spec_at(tmp_path, "toy.yaml")
    with pytest.raises(SystemExit) as info:
        main(["schedule", "install", str(spec), "--systemd", "--on-calendar", value, "--unit-dir", str(tmp_path / "units")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: --on-calendar value ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "units").exists()


def systemd_words(value: str) -> list[str]:
    """ExecStart= as systemd reads it: specifiers (%%), variables ($$), double quotes with escapes."""
    assert not re.search(r"%[^%]", value.replace("%%", "")), "an unescaped % is a specifier"
    return [word.replace("$$", "$").replace("%%", "%") for word in shlex.split(value)]


def test_shell_and_systemd_metacharacters_in_paths_are_escaped_not_interpreted(tmp_path, capsys):
    folder = tmp_path / 'we"ird $HOME %h \\ dir'
    folder.mkdir()
    spec = spec_at(folder, "toy's %n.yaml")
    units = tmp_path / "units"
    log = folder / "log %u.txt"
    main(["schedule", "install", str(spec), "--cron", "0 3 * * 0", "--systemd", "--unit-dir", str(units), "--log-file", str(log)])
    (service,) = units.glob("*.service")
    text = service.read_text()
    directives = [line for line in text.splitlines() if line and not line.startswith(("#", "["))]
    assert [line.split("=", 1)[0] for line in directives] == [
        "Description", "Type", "WorkingDirectory", "Environment", "ExecStart", "StandardOutput", "StandardError"]
    values = dict(line.split("=", 1) for line in directives)
    assert systemd_words(values["ExecStart"])[-1] == str(spec.resolve())
    assert values["StandardOutput"].replace("%%", "%") == f"append:{log}"
    analyze = shutil.which("systemd-analyze")
    if analyze:  # systemd itself parses the unit without complaint
        result = subprocess.run([analyze, "verify", str(service)], capture_output=True, text=True)
        assert "bad unit file setting" not in result.stderr and "not absolute" not in result.stderr, result.stderr


def test_crontab_entry_stays_two_lines_with_shell_metacharacters(tmp_path):
    folder = tmp_path / "a;b $(touch pwned) `x` %d"
    folder.mkdir()
    spec = spec_at(folder, "toy.yaml")
    crontab = tmp_path / "crontab"
    main(["schedule", "install", str(spec), "--cron", "@daily", "--crontab-file", str(crontab)])
    lines = crontab.read_text().splitlines()
    assert len(lines) == 2 and lines[0].endswith(str(spec.resolve()))
    command = lines[1].split(" ", 1)[1]
    assert "\\%d" in command and "%d" not in command.replace("\\%d", "")  # cron would turn % into a newline
    assert str(spec.resolve()) in shlex.split(command.replace("\\%", "%"))


def test_refuse_line_breaks_names_the_character():
    with pytest.raises(ConfigError, match=r"^log file '/a\\tb' contains U\+0009 \(tab\)") as info:
        schedule.refuse_line_breaks("/a\tb", "log file")
    assert "\n" not in str(info.value)
    assert schedule.refuse_line_breaks("/plain path/é.yaml", "x") == "/plain path/é.yaml"
