"""Periodic retraining: a crontab entry or a systemd user timer that runs ``dgmeta retrain SPEC``.

Every entry is marked with a comment naming the pipeline's absolute path, so installing twice
replaces the entry instead of adding a second one, and ``list``/``remove`` find exactly ours.
Commands use absolute paths throughout (the interpreter, the spec, the log file and a SQLite
tracking store) because cron and systemd start jobs with a bare environment in another folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from dgmeta.errors import ConfigError
from dgmeta.orchestration.cron import parse_cron, to_on_calendar

MARKER = "# dgmeta-retrain pipeline="
DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"


@dataclass(frozen=True)
class RetrainJob:
    """What a schedule entry runs."""

    pipeline: Path
    tracking_uri: str
    log_file: Path
    workdir: Path
    python: str = sys.executable

    def argv(self) -> list[str]:
        return [self.python, "-m", "dgmeta", "retrain", str(self.pipeline)]


@dataclass(frozen=True)
class ScheduleEntry:
    pipeline: str
    when: str  # cron expression or OnCalendar value
    kind: str  # "crontab" | "systemd"
    location: str  # crontab file / "user crontab" / unit path


def make_job(pipeline: str | Path, tracking_uri: str | None = None, log_file: str | Path | None = None) -> RetrainJob:
    pipeline = Path(pipeline).resolve()
    uri = absolute_tracking_uri(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)
    log = Path(log_file).resolve() if log_file else _state_dir() / "logs" / f"retrain-{unit_slug(pipeline)}.log"
    return RetrainJob(pipeline=pipeline, tracking_uri=uri, log_file=log, workdir=Path.cwd())


def absolute_tracking_uri(uri: str) -> str:
    """A relative SQLite/file store means "relative to here"; a scheduled job runs elsewhere."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    if uri.startswith("file:") and not uri.startswith("file:/"):
        return Path(uri[len("file:") :]).resolve().as_uri()
    if "://" not in uri and not uri.startswith("file:"):
        return str(Path(uri).resolve())
    return uri


def unit_slug(pipeline: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "-", pipeline.stem)
    return f"{stem}-{hashlib.sha1(str(pipeline).encode()).hexdigest()[:8]}"


_CHAR_NAMES = {"\n": "line feed", "\r": "carriage return", "\t": "tab", "\x00": "NUL", "\x85": "next line"}


def refuse_line_breaks(text: str, what: str) -> str:
    """``text`` unchanged, or a ConfigError if it holds a control or line-separator character.

    Crontabs and unit files are line based: a newline in a path would end the entry and start a
    new crontab line or unit directive of the caller's choosing, and no quoting survives that.
    """
    for char in str(text):
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            name = _CHAR_NAMES.get(char) or unicodedata.name(char, "control character")
            raise ConfigError(
                f"{what} {str(text)!r} contains U+{ord(char):04X} ({name.lower()}), which cannot go into a crontab line or a systemd unit",
                "rename it or pass a value without control characters or line breaks",
            )
    return str(text)


def _job_fields(job: RetrainJob) -> None:
    refuse_line_breaks(str(job.pipeline), "pipeline path")
    refuse_line_breaks(job.tracking_uri, "tracking URI")
    refuse_line_breaks(str(job.log_file), "log file")
    refuse_line_breaks(str(job.workdir), "working folder")
    refuse_line_breaks(job.python, "Python interpreter path")


def _state_dir() -> Path:
    return Path(os.environ.get("DGMETA_CACHE") or Path.home() / ".cache" / "dgmeta")


# -- crontab -----------------------------------------------------------------------------


def crontab_lines(job: RetrainJob, cron: str) -> list[str]:
    _job_fields(job)
    schedule = parse_cron(refuse_line_breaks(cron, "cron expression"))
    command = (
        f"cd {shlex.quote(str(job.workdir))} && MLFLOW_TRACKING_URI={shlex.quote(job.tracking_uri)} "
        f"{shlex.join(job.argv())} >> {shlex.quote(str(job.log_file))} 2>&1"
    )
    # cron turns an unescaped % into a newline
    return [f"{MARKER}{job.pipeline}", f"{schedule.expression} {command.replace('%', chr(92) + '%')}"]


class Crontab:
    """The user's crontab (via the ``crontab`` command) or, for tests and dry runs, a plain file."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None

    @property
    def location(self) -> str:
        return str(self.path) if self.path else "user crontab"

    def read(self) -> list[str]:
        if self.path is not None:
            return self.path.read_text().splitlines() if self.path.exists() else []
        result = subprocess.run([_crontab_binary(), "-l"], capture_output=True, text=True)
        if result.returncode != 0:
            if "no crontab" in result.stderr.lower():
                return []
            raise ConfigError(f"crontab -l failed: {result.stderr.strip()[:200]}", "check that cron is installed and usable by this user")
        return result.stdout.splitlines()

    def write(self, lines: list[str]) -> None:
        text = "\n".join(lines) + "\n" if lines else ""
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(text)
            return
        result = subprocess.run([_crontab_binary(), "-"], input=text, capture_output=True, text=True)
        if result.returncode != 0:
            raise ConfigError(f"crontab refused the new table: {result.stderr.strip()[:200]}", "check the cron expression and the cron service")


def _crontab_binary() -> str:
    found = shutil.which("crontab")
    if not found:
        raise ConfigError("the crontab command is not installed", "install cron, or use --systemd, or write to a file with --crontab-file PATH")
    return found


def _without_pipeline(lines: list[str], pipeline: Path) -> tuple[list[str], bool]:
    out, removed, skip_next = [], False, False
    for line in lines:
        if skip_next:
            skip_next = False
            continue
        if line.strip() == f"{MARKER}{pipeline}":
            removed = skip_next = True
            continue
        out.append(line)
    return out, removed


def install_crontab(job: RetrainJob, cron: str, crontab: Crontab) -> list[str]:
    entry = crontab_lines(job, cron)
    lines, _ = _without_pipeline(crontab.read(), job.pipeline)
    crontab.write(lines + entry)
    job.log_file.parent.mkdir(parents=True, exist_ok=True)
    return entry


def remove_crontab(pipeline: str | Path, crontab: Crontab) -> bool:
    lines, removed = _without_pipeline(crontab.read(), Path(pipeline).resolve())
    if removed:
        crontab.write(lines)
    return removed


def list_crontab(crontab: Crontab) -> list[ScheduleEntry]:
    lines = crontab.read()
    entries = []
    for marker, entry in zip(lines, lines[1:] + [""]):
        if marker.startswith(MARKER):
            fields = entry.split()
            when = fields[0] if fields and fields[0].startswith("@") else " ".join(fields[:5])
            entries.append(ScheduleEntry(marker[len(MARKER) :], when, "crontab", crontab.location))
    return entries


# -- systemd -----------------------------------------------------------------------------


def default_unit_dir() -> Path:
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "systemd" / "user"


def _specifiers(text: str) -> str:
    """systemd expands %h, %u, ... in most settings: a literal % is written %%."""
    return text.replace("%", "%%")


def _systemd_word(text: str) -> str:
    """One word of ExecStart=/Environment=, quoted (with C escapes) when it holds blanks, quotes or
    backslashes; % doubled because systemd expands specifiers there."""
    if text and not any(c.isspace() or c in '"\'\\' for c in text):
        return _specifiers(text)
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{_specifiers(escaped)}"'


def _systemd_path(text: str, what: str) -> str:
    """WorkingDirectory= and StandardOutput=append: take the rest of the line unquoted (systemd
    strips it), so a path that starts or ends with whitespace cannot be written there."""
    if text != text.strip():
        raise ConfigError(f"{what} {text!r} starts or ends with whitespace, which a systemd unit cannot hold", "rename it or pass another path")
    return _specifiers(text)


def systemd_units(job: RetrainJob, on_calendar: str) -> dict[str, str]:
    _job_fields(job)
    on_calendar = refuse_line_breaks(on_calendar, "--on-calendar value").strip()
    name = f"dgmeta-retrain-{unit_slug(job.pipeline)}"
    exec_start = " ".join(_systemd_word(part).replace("$", "$$") for part in job.argv())
    log = _systemd_path(str(job.log_file), "log file")
    service = f"""[Unit]
Description=dgmeta retrain {_specifiers(str(job.pipeline))}
{MARKER}{job.pipeline}

[Service]
Type=oneshot
WorkingDirectory={_systemd_path(str(job.workdir), "working folder")}
Environment={_systemd_word("MLFLOW_TRACKING_URI=" + job.tracking_uri)}
ExecStart={exec_start}
StandardOutput=append:{log}
StandardError=append:{log}
"""
    timer = f"""[Unit]
Description=Scheduled dgmeta retrain {_specifiers(str(job.pipeline))}
{MARKER}{job.pipeline}

[Timer]
OnCalendar={on_calendar}
Persistent=true
Unit={name}.service

[Install]
WantedBy=timers.target
"""
    return {f"{name}.service": service, f"{name}.timer": timer}


def install_systemd(job: RetrainJob, cron: str | None, on_calendar: str | None, unit_dir: Path) -> list[Path]:
    if on_calendar is None:
        if cron is None:
            raise ConfigError("no schedule given", 'pass --cron "0 3 * * 0" or --on-calendar, or add schedule: {cron: ...} to the spec')
        on_calendar = to_on_calendar(cron)
    units = systemd_units(job, on_calendar)  # refuses hostile text before anything is written
    unit_dir.mkdir(parents=True, exist_ok=True)
    job.log_file.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, text in units.items():
        path = unit_dir / filename
        path.write_text(text)
        written.append(path)
    return written


def list_systemd(unit_dir: Path) -> list[ScheduleEntry]:
    entries = []
    for timer in sorted(unit_dir.glob("dgmeta-retrain-*.timer")):
        text = timer.read_text()
        pipeline = re.search(rf"^{re.escape(MARKER)}(.*)$", text, re.M)
        when = re.search(r"^OnCalendar=(.*)$", text, re.M)
        if pipeline:
            entries.append(ScheduleEntry(pipeline.group(1), when.group(1) if when else "?", "systemd", str(timer)))
    return entries


def remove_systemd(pipeline: str | Path, unit_dir: Path) -> list[Path]:
    name = f"dgmeta-retrain-{unit_slug(Path(pipeline).resolve())}"
    removed = []
    for suffix in (".timer", ".service"):
        path = unit_dir / f"{name}{suffix}"
        if path.exists():
            path.unlink()
            removed.append(path)
    return removed
