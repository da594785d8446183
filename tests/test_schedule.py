"""Cron validation and conversion, crontab entries (in a file, never the real crontab), systemd units."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from dgmeta.cli.main import main
from dgmeta.errors import ConfigError
from dgmeta.orchestration.cron import parse_cron, to_on_calendar

SPEC = "dataset: toy\nexperiment: sched\nregister: {model_name: toy}\n"


@pytest.mark.parametrize(
    "expression, minutes, hours, days, months, weekdays",
    [
        ("0 3 * * 0", (0,), (3,), tuple(range(1, 32)), tuple(range(1, 13)), (0,)),
        ("0 3 * * *", (0,), (3,), tuple(range(1, 32)), tuple(range(1, 13)), tuple(range(7))),
        ("*/20 1-3 1,15 jan,JUN sun,sat", (0, 20, 40), (1, 2, 3), (1, 15), (1, 6), (0, 6)),
        ("5/30 0 * * 7", (5, 35), (0,), tuple(range(1, 32)), tuple(range(1, 13)), (0,)),
        ("@weekly", (0,), (0,), tuple(range(1, 32)), tuple(range(1, 13)), (0,)),
    ],
)
def test_parse_cron(expression, minutes, hours, days, months, weekdays):
    schedule = parse_cron(expression)
    assert (schedule.minutes, schedule.hours, schedule.days, schedule.months) == (minutes, hours, days, months)
    assert schedule.weekdays == weekdays


@pytest.mark.parametrize(
    "expression, message",
    [
        ("0 3 * *", "has 4 fields, expected 5"),
        ("60 3 * * 0", "minute field '60'.*outside 0-59"),
        ("0 24 * * 0", "hour field '24'.*outside 0-23"),
        ("0 3 0 * *", "day-of-month field '0'"),
        ("0 3 * 13 *", "month field '13'"),
        ("0 3 * * 8", "day-of-week field '8'"),
        ("0 3 * * funday", "'funday' is not a number or a name"),
        ("*/0 * * * *", "step '0' must be a positive integer"),
        ("0 5-2 * * *", "range 5-2 runs backwards"),
        ("0 3,,4 * * *", "empty list item"),
        ("@reboot", "unsupported cron macro"),
    ],
)
def test_invalid_cron_is_one_line(expression, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_cron(expression)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "expression, calendar",
    [
        ("0 3 * * 0", "Sun *-*-* 03:00:00"),
        ("*/15 * * * *", "*-*-* *:00,15,30,45:00"),
        ("5 4 1,15 jan,jun *", "*-01,06-01,15 04:05:00"),
        ("0 9-17/4 * * mon-fri", "Mon,Tue,Wed,Thu,Fri *-*-* 09,13,17:00:00"),
        ("@daily", "*-*-* 00:00:00"),
    ],
)
def test_on_calendar_conversion(expression, calendar):
    assert to_on_calendar(expression) == calendar
    analyze = shutil.which("systemd-analyze")
    if analyze:  # systemd itself accepts the value and normalises it to the same times
        result = subprocess.run([analyze, "calendar", calendar], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_day_of_month_and_week_together_need_on_calendar():
    with pytest.raises(ConfigError, match="cron ORs but systemd ANDs.*--on-calendar"):
        to_on_calendar("0 3 1 * mon")


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(SPEC)
    return path


def test_crontab_install_is_idempotent_list_and_remove(tmp_path, spec, capsys):
    crontab = tmp_path / "crontab"
    crontab.write_text("MAILTO=me\n17 * * * * echo unrelated\n")
    main(["schedule", "install", str(spec), "--cron", "0 3 * * 0", "--crontab-file", str(crontab), "--tracking-uri", "sqlite:///rel/store.db"])
    main(["schedule", "install", str(spec), "--cron", "30 4 * * 1", "--crontab-file", str(crontab), "--tracking-uri", "sqlite:///rel/store.db"])
    lines = crontab.read_text().splitlines()
    assert lines[:2] == ["MAILTO=me", "17 * * * * echo unrelated"]
    assert len(lines) == 4 and lines[2] == f"# dgmeta-retrain pipeline={spec.resolve()}"
    entry = lines[3]
    assert entry.startswith("30 4 * * 1 cd ")  # the second install replaced the first
    assert f"-m dgmeta retrain {spec.resolve()}" in entry
    assert f"MLFLOW_TRACKING_URI=sqlite:///{os.getcwd()}/rel/store.db" in entry  # relative store made absolute
    assert re.search(r">> \S+/logs/retrain-toy-[0-9a-f]{8}\.log 2>&1$", entry)
    capsys.readouterr()

    main(["schedule", "list", "--crontab-file", str(crontab), "--unit-dir", str(tmp_path / "units")])
    listed = capsys.readouterr().out
    assert "crontab" in listed and "30 4 * * 1" in listed and str(spec.resolve()) in listed

    main(["schedule", "remove", str(spec), "--crontab-file", str(crontab), "--unit-dir", str(tmp_path / "units")])
    assert crontab.read_text().splitlines() == ["MAILTO=me", "17 * * * * echo unrelated"]
    with pytest.raises(SystemExit) as info:
        main(["schedule", "remove", str(spec), "--crontab-file", str(crontab), "--unit-dir", str(tmp_path / "units")])
    assert info.value.code == 2 and "no schedule found" in capsys.readouterr().err


def test_crontab_command_really_runs_retrain(tmp_path, spec):
    """The installed line works under a bare shell: cd, environment, interpreter, quoting, log redirect."""
    crontab = tmp_path / "crontab"
    log = tmp_path / "logs dir" / "retrain.log"
    main(["schedule", "install", str(spec), "--cron", "@daily", "--crontab-file", str(crontab), "--log-file", str(log)])
    command = crontab.read_text().splitlines()[-1].split(" ", 1)[1].replace("\\%", "%")
    spec.write_text("dataset: [unclosed\n")  # fails fast at load, before any training
    result = subprocess.run(["/bin/sh", "-c", command], env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, cwd="/")
    assert result.returncode == 2
    assert "error: " in log.read_text() and "toy.yaml: malformed YAML at line" in log.read_text()


def test_schedule_from_spec_and_cli_errors(tmp_path, spec, capsys):
    crontab = tmp_path / "crontab"
    with pytest.raises(SystemExit) as info:
        main(["schedule", "install", str(spec), "--crontab-file", str(crontab)])
    assert info.value.code == 2 and "no schedule given" in capsys.readouterr().err
    spec.write_text(SPEC + "schedule: {cron: '15 2 * * 3'}\n")
    main(["schedule", "install", str(spec), "--crontab-file", str(crontab)])
    assert crontab.read_text().splitlines()[-1].startswith("15 2 * * 3 ")
    with pytest.raises(SystemExit) as info:
        main(["schedule", "install", str(spec), "--cron", "0 3 * * sunday", "--crontab-file", str(crontab)])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and err.startswith("error: invalid cron day-of-week field 'sunday'") and "\n" not in err
    no_register = tmp_path / "plain.yaml"
    no_register.write_text("dataset: toy\n")
    with pytest.raises(SystemExit):
        main(["schedule", "install", str(no_register), "--cron", "@daily", "--crontab-file", str(crontab)])
    assert "has no register: section" in capsys.readouterr().err


def test_systemd_units(tmp_path, spec, capsys):
    units = tmp_path / "units"
    main(["schedule", "install", str(spec), "--cron", "0 3 * * 0", "--systemd", "--unit-dir", str(units)])
    timer = next(units.glob("dgmeta-retrain-toy-*.timer"))
    service = timer.with_suffix(".service")
    assert "OnCalendar=Sun *-*-* 03:00:00" in timer.read_text() and f"Unit={service.name}" in timer.read_text()
    text = service.read_text()
    assert f"-m dgmeta retrain {spec.resolve()}" in text and "Type=oneshot" in text and "Environment=MLFLOW_TRACKING_URI=" in text
    assert "systemctl --user enable --now" in capsys.readouterr().out

    with pytest.raises(SystemExit):
        main(["schedule", "install", str(spec), "--cron", "0 3 1 * mon", "--systemd", "--unit-dir", str(units)])
    assert "--on-calendar" in capsys.readouterr().err
    main(["schedule", "install", str(spec), "--systemd", "--on-calendar", "Mon *-*-01 03:00:00", "--unit-dir", str(units)])
    assert "OnCalendar=Mon *-*-01 03:00:00" in timer.read_text()

    main(["schedule", "list", "--crontab-file", str(tmp_path / "none"), "--unit-dir", str(units)])
    assert "systemd" in capsys.readouterr().out
    main(["schedule", "remove", str(spec), "--crontab-file", str(tmp_path / "none"), "--unit-dir", str(units)])
    assert list(units.iterdir()) == []
