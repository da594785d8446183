"""`dgmeta schedule install|list|remove`: periodic `dgmeta retrain` via cron or a systemd user timer."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

schedule_app = typer.Typer(help="Schedule periodic retraining of a pipeline (crontab or systemd user timer).", no_args_is_help=True)

_CRONTAB_FILE = typer.Option(None, "--crontab-file", help="edit this file instead of the user's crontab (tests, dry runs)", show_default="the user's crontab")
_UNIT_DIR = typer.Option(None, "--unit-dir", help="systemd user unit folder", show_default="~/.config/systemd/user")


@schedule_app.command("install")
def install(
    pipeline: Path = typer.Argument(..., help="pipeline spec to retrain"),
    cron: Optional[str] = typer.Option(None, "--cron", help='cron expression, e.g. "0 3 * * 0"', show_default="the spec's schedule.cron"),
    systemd: bool = typer.Option(False, "--systemd/--crontab", help="write a systemd user timer + service instead of a crontab entry"),
    on_calendar: Optional[str] = typer.Option(None, "--on-calendar", help="systemd OnCalendar value", show_default="converted from --cron"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking store of the scheduled runs", show_default="the spec's, else $MLFLOW_TRACKING_URI, else ./mlruns.db"),
    log_file: Optional[Path] = typer.Option(None, "--log-file", help="append the job's output here", show_default="~/.cache/dgmeta/logs/retrain-NAME.log"),
    crontab_file: Optional[Path] = _CRONTAB_FILE,
    unit_dir: Optional[Path] = _UNIT_DIR,
) -> None:
    """Install (or replace) the schedule of PIPELINE.

    Examples:

      dgmeta schedule install pipelines/pacs_retrain_weekly.yaml --cron "0 3 * * 0"

      dgmeta schedule install pipelines/pacs_retrain_weekly.yaml --systemd
    """
    from dgmeta.errors import ConfigError
    from dgmeta.orchestration import schedule
    from dgmeta.orchestration.spec import load_pipeline

    spec = load_pipeline(pipeline)  # a broken spec fails now, not at 3 a.m.
    if spec.register is None:
        raise ConfigError(f"{pipeline} has no register: section", "retraining needs register: {model_name: NAME}")
    cron = cron or (spec.schedule.cron if spec.schedule else None)
    job = schedule.make_job(pipeline, tracking_uri or spec.tracking_uri, log_file)
    if systemd:
        paths = schedule.install_systemd(job, cron, on_calendar, unit_dir or schedule.default_unit_dir())
        timer = next(p for p in paths if p.suffix == ".timer")
        typer.echo(f"wrote {', '.join(str(p) for p in paths)}")
        typer.echo(f"enable it with: systemctl --user daemon-reload && systemctl --user enable --now {timer.name}")
        return
    if cron is None:
        raise ConfigError("no schedule given", 'pass --cron "0 3 * * 0" or add schedule: {cron: ...} to the spec')
    crontab = schedule.Crontab(crontab_file)
    lines = schedule.install_crontab(job, cron, crontab)
    typer.echo(f"installed in {crontab.location}:\n  {lines[1]}\nlog: {job.log_file}")


@schedule_app.command("list")
def list_(crontab_file: Optional[Path] = _CRONTAB_FILE, unit_dir: Optional[Path] = _UNIT_DIR) -> None:
    """List scheduled retraining jobs (crontab entries and systemd timers).

    Example:

      dgmeta schedule list
    """
    from dgmeta.orchestration import schedule

    entries = schedule.list_systemd(unit_dir or schedule.default_unit_dir())
    if crontab_file is not None or _crontab_available():
        entries = schedule.list_crontab(schedule.Crontab(crontab_file)) + entries
    if not entries:
        typer.echo("no scheduled retraining")
    for entry in entries:
        typer.echo(f"{entry.kind:8} {entry.when:20} {entry.pipeline}  ({entry.location})")


@schedule_app.command("remove")
def remove(
    pipeline: Path = typer.Argument(..., help="pipeline spec whose schedule to remove"),
    crontab_file: Optional[Path] = _CRONTAB_FILE,
    unit_dir: Optional[Path] = _UNIT_DIR,
) -> None:
    """Remove the crontab entry and/or systemd units of PIPELINE.

    Example:

      dgmeta schedule remove pipelines/pacs_retrain_weekly.yaml
    """
    from dgmeta.errors import ConfigError
    from dgmeta.orchestration import schedule

    removed = [str(p) for p in schedule.remove_systemd(pipeline, unit_dir or schedule.default_unit_dir())]
    crontab = schedule.Crontab(crontab_file)
    if (crontab_file is not None or _crontab_available()) and schedule.remove_crontab(pipeline, crontab):
        removed.append(crontab.location)
    if not removed:
        raise ConfigError(f"no schedule found for {pipeline}", "see `dgmeta schedule list`")
    typer.echo(f"removed the schedule of {Path(pipeline).resolve()} from {', '.join(removed)}")


def _crontab_available() -> bool:
    import shutil

    return shutil.which("crontab") is not None


def register(app: typer.Typer) -> None:
    app.add_typer(schedule_app, name="schedule")
