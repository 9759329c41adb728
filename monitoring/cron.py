"""Crontab expressions (``minute hour day-of-month month day-of-week``, times in UTC) as APScheduler triggers,
with crontab's meaning kept.

APScheduler 3's ``CronTrigger.from_crontab`` differs from crontab(5) in two ways, both documented by
APScheduler (its docstring's warning, issue agronholm/apscheduler#286):

* day-of-week numbers: crontab counts 0 (or 7) = Sunday, 1 = Monday ... 6 = Saturday; APScheduler 3
  counts 0 = Monday ... 6 = Sunday. ``"0 3 * * 0"`` would fire on Mondays. Here numbers are translated
  to day names (which both read alike) before APScheduler sees them;
* a restricted day-of-month *and* day-of-week: crontab fires when either matches, APScheduler when both
  do. Such an expression is refused, with the reason, rather than run on other days than meant.
"""

from __future__ import annotations

import re
from datetime import datetime

CRON_FIELDS = ("minute", "hour", "day of month", "month", "day of week")
DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab's 0..6 (7 is Sunday again)
MAX_CRON_CHARS = 200  # an expression longer than this is not a schedule anyone meant
_DAY = r"(\d+|[a-zA-Z]{3})"
_TOKEN = re.compile(rf"^(\*|{_DAY}(?:-{_DAY})?)(?:/(\d+))?$")


def _day_number(text: str) -> int:
    """crontab's number of a day-of-week value (a number 0-7 or a three-letter name)."""
    if text.isdigit():
        number = int(text)
        if number > 7:
            raise ValueError(f"day of week {number} is out of range: use 0-7 (0 and 7 are Sunday) or sun..sat")
        return number % 7
    if text.lower() not in DAY_NAMES:
        raise ValueError(f"day of week {text!r} is not a day: use 0-7 (0 and 7 are Sunday) or sun..sat")
    return DAY_NAMES.index(text.lower())


def crontab_days(field: str) -> list[int]:
    """The days (crontab numbers 0 = Sunday .. 6 = Saturday, sorted) a day-of-week field names.

    Accepts ``*``, numbers 0-7, names sun..sat, ranges ``a-b`` (``5-7`` = Friday to Sunday), steps
    ``*/n`` and ``a-b/n``, and comma lists of them.

    Raises:
        ValueError: a part is none of those, or a range runs backwards.
    """
    days: set[int] = set()
    for part in field.split(","):
        match = _TOKEN.match(part)
        if match is None:
            raise ValueError(f"day of week {part!r}: use a number 0-7, a name sun..sat, a range a-b, a step */n "
                             "or a comma list of them")
        step = int(match.group(4)) if match.group(4) else 1
        if step < 1:
            raise ValueError(f"day of week {part!r}: the step must be at least 1")
        if match.group(1) == "*":
            first, last = 0, 6
        else:
            first = _day_number(match.group(2))
            last = first if match.group(3) is None else _day_number(match.group(3))
            if match.group(3) is not None and match.group(3) in ("7",) and first > 0:
                last = 7  # "5-7": Friday to Sunday
            if last < first:
                raise ValueError(f"day of week {part!r} runs backwards: write it as a list (e.g. fri,sat,sun)")
            if match.group(3) is None and step > 1:
                last = 6  # crontab: "1/2" = every second day from Monday
        days.update(d % 7 for d in range(first, last + 1, step))
    return sorted(days)


def cron_trigger(expr: str):
    """An APScheduler ``CronTrigger`` (UTC) that fires when crontab(5) would run ``expr``.

    Args:
        expr: five fields ``minute hour day-of-month month day-of-week``, e.g. ``"0 3 * * 0"``
            (Sundays at 03:00 UTC); day of week 0 and 7 are Sunday, as in crontab.

    Returns:
        ``apscheduler.triggers.cron.CronTrigger``.

    Raises:
        ValueError: not five fields, a field out of range, longer than :data:`MAX_CRON_CHARS`, or both
            day-of-month and day-of-week restricted (the message says which and how to fix it).
    """
    from apscheduler.triggers.cron import CronTrigger

    if not isinstance(expr, str) or len(expr) > MAX_CRON_CHARS:
        raise ValueError(f"a cron expression is a string of at most {MAX_CRON_CHARS} characters")
    fields = expr.split()
    if len(fields) != len(CRON_FIELDS):
        raise ValueError(f"cron expression {expr!r} has {len(fields)} fields; it needs 5: "
                         f"{' '.join(f.replace(' ', '-') for f in CRON_FIELDS)} (e.g. '0 3 * * 0': Sundays at 03:00 UTC)")
    minute, hour, day, month, weekday = fields
    if day != "*" and weekday != "*":
        raise ValueError(f"cron expression {expr!r} restricts both the day of month and the day of week: crontab runs "
                         "when either matches, APScheduler only when both do; restrict one of them")
    try:
        names = "*" if weekday == "*" else ",".join(DAY_NAMES[d] for d in crontab_days(weekday))
        return CronTrigger(minute=minute, hour=hour, day=day, month=month, day_of_week=names, timezone="UTC")
    except ValueError as exc:
        raise ValueError(f"cron expression {expr!r}: {exc}") from exc


def next_fire(expr: str, now: datetime) -> datetime | None:
    """When ``expr`` fires next after ``now`` (a timezone-aware datetime), or None if never."""
    return cron_trigger(expr).get_next_fire_time(None, now)
