"""Deadlines for answering an erasure request (GDPR Art. 12(3), CCPA), as pure functions.

Rules, per ``regime``:

* ``eu`` — Regulation (EEC, Euratom) No 1182/71, Art. 3: the day of receipt does not
  count (3(1)); a period in months ends on the same date of the last month, or on that
  month's last day when it lacks the date (3(2)(c)); a period ending on a Saturday,
  Sunday or public holiday runs to the end of the next working day (3(4)).
  Received 3 Sep 2025 → Fri 3 Oct 2025; received 31 Jan 2026 → 28 Feb 2026 is a
  Saturday → Mon 2 Mar 2026.
* ``uk`` — the ICO's counting: from the day after receipt to the corresponding date of
  the next month (the month's last day when it lacks the date), then moved to the next
  working day. Received 3 Sep 2025 → 4 Oct 2025 (a Saturday) → Mon 6 Oct 2025.
* ``ccpa`` — 45 calendar days after receipt, extendable once by 45 (Cal. Code Regs.
  tit. 11 § 7021(b)); calendar days, so no move to a working day.

Extension (Art. 12(3)): once, by two further months, i.e. the same rule applied to a
period of three months; only while the first deadline has not passed (the due date
itself still counts as within time).
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from datetime import date, timedelta

EU = "eu"
UK = "uk"
CCPA = "ccpa"
REGIMES = (EU, UK, CCPA)
CCPA_DAYS = 45
EXTENSION_MONTHS = 2


def add_months(day: date, months: int) -> date:
    """The same date ``months`` later, or that month's last day when it lacks the date."""
    month_index = day.month - 1 + months
    year, month = day.year + month_index // 12, month_index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def is_working_day(day: date, holidays: Iterable[date] = ()) -> bool:
    return day.weekday() < 5 and day not in set(holidays)


def next_working_day(day: date, holidays: Iterable[date] = ()) -> date:
    """``day`` itself if it is a working day, otherwise the first working day after it."""
    holiday_set = set(holidays)
    while day.weekday() >= 5 or day in holiday_set:
        day += timedelta(days=1)
    return day


def _period_end(*, regime: str, received_on: date, months: int, holidays: Iterable[date]) -> date:
    if regime == EU:
        return next_working_day(add_months(received_on, months), holidays)
    if regime == UK:
        return next_working_day(add_months(received_on + timedelta(days=1), months), holidays)
    raise ValueError(f"unknown regime {regime!r}; choose one of {', '.join(REGIMES)}")


def due_date(*, regime: str, received_on: date, holidays: Iterable[date] = ()) -> date:
    """The last day on which the answer is in time."""
    if regime == CCPA:
        return received_on + timedelta(days=CCPA_DAYS)
    return _period_end(regime=regime, received_on=received_on, months=1, holidays=holidays)


def extended_due_date(*, regime: str, received_on: date, holidays: Iterable[date] = ()) -> date:
    """The due date after the one extension the regime allows."""
    if regime == CCPA:
        return received_on + timedelta(days=2 * CCPA_DAYS)
    return _period_end(regime=regime, received_on=received_on, months=1 + EXTENSION_MONTHS, holidays=holidays)


def extension_allowed(*, first_due: date, today: date, already_extended: bool) -> tuple[bool, str]:
    """(allowed, reason when not): one extension, decided before the first deadline passes."""
    if already_extended:
        return False, "The deadline was already extended once; Art. 12(3) allows one extension."
    if today > first_due:
        return False, (
            f"The first deadline ({first_due.isoformat()}) has passed; an extension must be decided "
            "and told to the subject within it (Art. 12(3))."
        )
    return True, ""


def days_left(*, due: date, today: date) -> int:
    """Days until ``due`` (0 on the due date, negative once overdue)."""
    return (due - today).days


def parse_holidays(values: Iterable[str], *, source: str = "ERASURE_PUBLIC_HOLIDAYS") -> frozenset[date]:
    out = set()
    for raw in values:
        value = raw.split("#", 1)[0].strip()
        if not value:
            continue
        try:
            out.add(date.fromisoformat(value))
        except ValueError as exc:
            raise ValueError(f"{source}: {value!r} is not an ISO date (YYYY-MM-DD)") from exc
    return frozenset(out)


def configured_holidays() -> frozenset[date]:
    """Public holidays from settings: ERASURE_PUBLIC_HOLIDAYS plus ERASURE_PUBLIC_HOLIDAYS_FILE."""
    from django.conf import settings

    holidays = set(parse_holidays(settings.ERASURE_PUBLIC_HOLIDAYS))
    path = settings.ERASURE_PUBLIC_HOLIDAYS_FILE
    if path:
        with open(path, encoding="utf-8") as fh:
            holidays |= parse_holidays(fh.read().splitlines(), source=path)
    return frozenset(holidays)
