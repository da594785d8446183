"""Cron expressions: validation and conversion to a systemd ``OnCalendar=`` value.

Five fields (minute hour day-of-month month day-of-week) with ``*``, lists, ranges, steps and
English names (``jan``, ``sun``), or a macro (``@daily``, ``@weekly``, ...). Each field is
expanded to its explicit set of values, which makes the systemd conversion exact: a systemd
calendar lists the same values. The one thing systemd cannot say is cron's rule that a job
whose day-of-month *and* day-of-week are both restricted runs when *either* matches (systemd
requires both), so that case asks for an explicit ``--on-calendar``.

Kept rather than a library: croniter and its kin validate and iterate cron times, but none converts to
systemd's OnCalendar, and that conversion needs exactly these expanded field sets.
"""

from __future__ import annotations

from dataclasses import dataclass

from dgmeta.errors import ConfigError

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_SYSTEMD_DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] stands for low + i


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, tuple(_MONTHS)),
    _Field("day-of-week", 0, 7, tuple(_DAYS) + ("sun",)),  # 0 and 7 are both Sunday
)
_HINT = 'write five fields "minute hour day-of-month month day-of-week", e.g. "0 3 * * 0" (Sundays 03:00), or @daily/@weekly'


@dataclass(frozen=True)
class CronSchedule:
    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    weekdays: tuple[int, ...]  # 0 = Sunday .. 6 = Saturday
    days_restricted: bool
    weekdays_restricted: bool


def parse_cron(expression: str) -> CronSchedule:
    text = " ".join(str(expression).split())
    expanded = MACROS.get(text.lower(), text)
    if expanded.startswith("@"):
        raise ConfigError(f"unsupported cron macro {text!r}", f"use one of {', '.join(MACROS)} or five fields")
    parts = expanded.split(" ")
    if len(parts) != 5:
        raise ConfigError(f"cron expression {text!r} has {len(parts)} fields, expected 5", _HINT)
    values = [_parse_field(part, spec, text) for part, spec in zip(parts, _FIELDS)]
    weekdays = tuple(sorted({0 if day == 7 else day for day in values[4]}))
    return CronSchedule(
        expression=text,
        minutes=values[0],
        hours=values[1],
        days=values[2],
        months=values[3],
        weekdays=weekdays,
        days_restricted=not parts[2].startswith("*"),
        weekdays_restricted=not parts[4].startswith("*"),
    )


def _parse_field(text: str, spec: _Field, expression: str) -> tuple[int, ...]:
    def bad(why: str) -> ConfigError:
        return ConfigError(f"invalid cron {spec.name} field {text!r} in {expression!r}: {why}", _HINT)

    out: set[int] = set()
    for item in text.split(","):
        if not item:
            raise bad("empty list item")
        body, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise bad(f"step {step_text!r} must be a positive integer")
            step = int(step_text)
        if body == "*":
            low, high = spec.low, spec.high
        elif "-" in body:
            first, _, last = body.partition("-")
            low, high = _value(first, spec, bad), _value(last, spec, bad)
            if low > high:
                raise bad(f"range {body} runs backwards")
        else:
            low = _value(body, spec, bad)
            high = spec.high if step_text else low  # "5/15" means from 5 to the end, every 15
        out.update(range(low, high + 1, step))
    return tuple(sorted(out))


def _value(text: str, spec: _Field, bad) -> int:
    lowered = text.lower()
    if spec.names and lowered in spec.names:
        return spec.low + spec.names.index(lowered)
    if not text.isdigit():
        raise bad(f"{text!r} is not a number" + (f" or a name ({', '.join(spec.names[:3])}, ...)" if spec.names else ""))
    value = int(text)
    if not spec.low <= value <= spec.high:
        raise bad(f"{value} is outside {spec.low}-{spec.high}")
    return value


def to_on_calendar(schedule: CronSchedule | str) -> str:
    """The systemd calendar event that fires at exactly the cron schedule's times."""
    if isinstance(schedule, str):
        schedule = parse_cron(schedule)
    if schedule.days_restricted and schedule.weekdays_restricted:
        raise ConfigError(
            f"cron {schedule.expression!r} restricts both day-of-month and day-of-week, which cron ORs but systemd ANDs",
            'pass the systemd calendar yourself with --on-calendar, e.g. --on-calendar "Sun *-*-1 03:00:00"',
        )
    weekday = ""
    if schedule.weekdays_restricted:
        weekday = ",".join(_SYSTEMD_DAYS[day] for day in schedule.weekdays) + " "
    month = _component(schedule.months, 12)
    day = _component(schedule.days, 31)
    hour = _component(schedule.hours, 24)
    minute = _component(schedule.minutes, 60)
    return f"{weekday}*-{month}-{day} {hour}:{minute}:00"


def _component(values: tuple[int, ...], full_size: int) -> str:
    if len(values) == full_size:
        return "*"
    return ",".join(f"{value:02d}" for value in values)
