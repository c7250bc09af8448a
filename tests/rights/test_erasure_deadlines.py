"""Deadline arithmetic for erasure requests (Art. 12(3); Reg. 1182/71 Art. 3; ICO; CCPA)."""

from __future__ import annotations

from datetime import date

import pytest

from rights import deadlines as d

D = date


@pytest.mark.parametrize(
    ("received", "due"),
    [
        (D(2025, 9, 3), D(2025, 10, 3)),  # the example: a Friday
        (D(2026, 1, 31), D(2026, 3, 2)),  # 28 Feb 2026 is a Saturday → Monday 2 March
        (D(2025, 1, 31), D(2025, 2, 28)),  # month lacks the 31st → its last day (a Friday)
        (D(2024, 1, 31), D(2024, 2, 29)),  # leap year: 29 Feb 2024 is a Thursday
        (D(2024, 1, 29), D(2024, 2, 29)),
        (D(2024, 1, 30), D(2024, 2, 29)),
        (D(2028, 1, 31), D(2028, 2, 29)),  # leap year 2028: 29 Feb is a Tuesday
        (D(2024, 2, 29), D(2024, 3, 29)),  # from a leap day: 29 Mar 2024 is a Friday
        (D(2028, 2, 29), D(2028, 3, 29)),  # Wednesday
        (D(2025, 3, 31), D(2025, 4, 30)),  # 30-day month
        (D(2025, 8, 31), D(2025, 9, 30)),
        (D(2025, 12, 15), D(2026, 1, 15)),  # year boundary
        (D(2025, 10, 4), D(2025, 11, 4)),  # received on a Saturday: still counts from that date
        (D(2025, 5, 1), D(2025, 6, 2)),  # 1 June 2025 is a Sunday
        (D(2025, 4, 30), D(2025, 5, 30)),
    ],
)
def test_eu_due_date(received, due):
    assert d.due_date(regime=d.EU, received_on=received) == due


def test_eu_31_december_2025_lands_on_saturday_31_january_2026():
    assert D(2026, 1, 31).weekday() == 5
    assert d.due_date(regime=d.EU, received_on=D(2025, 12, 31)) == D(2026, 2, 2)


def test_eu_february_in_non_leap_year_ends_on_28th_then_moves_off_weekend():
    # 28 Feb 2027 is a Sunday.
    assert d.due_date(regime=d.EU, received_on=D(2027, 1, 29)) == D(2027, 3, 1)
    assert d.due_date(regime=d.EU, received_on=D(2027, 1, 31)) == D(2027, 3, 1)


@pytest.mark.parametrize(
    ("received", "due"),
    [
        (D(2025, 9, 3), D(2025, 10, 6)),  # the example: 4 Oct is a Saturday
        (D(2025, 1, 30), D(2025, 2, 28)),  # day after is 31 Jan; Feb lacks the 31st
        (D(2025, 1, 31), D(2025, 3, 3)),  # counting starts 1 Feb → 1 Mar 2025, a Saturday → Monday 3 Mar
        (D(2024, 1, 28), D(2024, 2, 29)),  # leap year: starts 29 Jan → 29 Feb
        (D(2024, 2, 28), D(2024, 3, 29)),  # starts on the leap day → 29 Mar (Friday)
        (D(2028, 2, 28), D(2028, 3, 29)),
        (D(2025, 12, 31), D(2026, 2, 2)),  # starts 1 Jan → 1 Feb 2026, a Sunday
    ],
)
def test_uk_due_date(received, due):
    assert d.due_date(regime=d.UK, received_on=received) == due


def test_public_holiday_moves_the_deadline():
    # 3 Oct 2025 is German Unity Day: with it configured, the period runs to Monday 6 Oct.
    assert d.due_date(regime=d.EU, received_on=D(2025, 9, 3), holidays={D(2025, 10, 3)}) == D(2025, 10, 6)


def test_holidays_chain_into_a_weekend_and_beyond():
    # Due Thursday 24 Dec 2026; holidays 24, 25 Dec then the weekend, then 28 Dec also a holiday.
    holidays = {D(2026, 12, 24), D(2026, 12, 25), D(2026, 12, 28)}
    assert d.due_date(regime=d.EU, received_on=D(2026, 11, 24), holidays=holidays) == D(2026, 12, 29)
    # UK: Good Friday 3 Apr 2026 and Easter Monday 6 Apr 2026 around the weekend.
    easter = {D(2026, 4, 3), D(2026, 4, 6)}
    assert d.due_date(regime=d.UK, received_on=D(2026, 3, 2), holidays=easter) == D(2026, 4, 7)


def test_a_holiday_on_a_working_day_before_the_deadline_changes_nothing():
    assert d.due_date(regime=d.EU, received_on=D(2025, 9, 3), holidays={D(2025, 10, 2)}) == D(2025, 10, 3)


@pytest.mark.parametrize(
    ("received", "due", "extended"),
    [
        (D(2025, 9, 3), D(2025, 10, 18), D(2025, 12, 2)),
        (D(2024, 1, 15), D(2024, 2, 29), D(2024, 4, 14)),  # leap year: 45 days still counted as calendar days
        (D(2025, 12, 20), D(2026, 2, 3), D(2026, 3, 20)),
    ],
)
def test_ccpa_counts_calendar_days_and_extends_once_by_45(received, due, extended):
    assert d.due_date(regime=d.CCPA, received_on=received) == due
    assert d.extended_due_date(regime=d.CCPA, received_on=received) == extended


def test_ccpa_deadline_is_not_moved_off_a_weekend():
    received = D(2025, 9, 10)  # + 45 = Saturday 25 Oct 2025
    assert d.due_date(regime=d.CCPA, received_on=received) == D(2025, 10, 25)


def test_extension_is_two_further_months_under_the_same_rule():
    # EU: 3 Sep 2025 + 3 months = 3 Dec 2025 (Wednesday).
    assert d.extended_due_date(regime=d.EU, received_on=D(2025, 9, 3)) == D(2025, 12, 3)
    # 30 Nov 2025 + 3 months: February lacks the 30th → 28 Feb 2026 (Saturday) → 2 Mar.
    assert d.extended_due_date(regime=d.EU, received_on=D(2025, 11, 30)) == D(2026, 3, 2)
    # Leap year: 30 Nov 2027 → 29 Feb 2028 (Tuesday).
    assert d.extended_due_date(regime=d.EU, received_on=D(2027, 11, 30)) == D(2028, 2, 29)
    # UK: from 4 Sep 2025, three months → 4 Dec 2025 (Thursday).
    assert d.extended_due_date(regime=d.UK, received_on=D(2025, 9, 3)) == D(2025, 12, 4)


def test_extension_allowed_only_once_and_before_the_first_deadline():
    due = D(2025, 10, 3)
    assert d.extension_allowed(first_due=due, today=D(2025, 9, 20), already_extended=False) == (True, "")
    assert d.extension_allowed(first_due=due, today=due, already_extended=False)[0] is True  # the due day is in time
    allowed, reason = d.extension_allowed(first_due=due, today=D(2025, 10, 4), already_extended=False)
    assert not allowed and "passed" in reason
    allowed, reason = d.extension_allowed(first_due=due, today=D(2025, 9, 20), already_extended=True)
    assert not allowed and "once" in reason


def test_add_months_clamps_to_the_last_day():
    assert d.add_months(D(2025, 1, 31), 1) == D(2025, 2, 28)
    assert d.add_months(D(2024, 1, 31), 1) == D(2024, 2, 29)
    assert d.add_months(D(2025, 11, 30), 3) == D(2026, 2, 28)
    assert d.add_months(D(2025, 12, 31), 2) == D(2026, 2, 28)
    assert d.add_months(D(2023, 12, 31), 14) == D(2025, 2, 28)


def test_unknown_regime_is_refused():
    with pytest.raises(ValueError, match="unknown regime"):
        d.due_date(regime="xx", received_on=D(2025, 1, 1))


def test_days_left_is_negative_once_overdue():
    assert d.days_left(due=D(2025, 10, 3), today=D(2025, 10, 1)) == 2
    assert d.days_left(due=D(2025, 10, 3), today=D(2025, 10, 3)) == 0
    assert d.days_left(due=D(2025, 10, 3), today=D(2025, 10, 6)) == -3


def test_holidays_from_settings_and_file(settings, tmp_path):
    path = tmp_path / "holidays.txt"
    path.write_text("# Irish public holidays\n2025-10-27\n\n2025-12-25  # Christmas\n")
    settings.ERASURE_PUBLIC_HOLIDAYS = ["2025-10-03"]
    settings.ERASURE_PUBLIC_HOLIDAYS_FILE = str(path)
    assert d.configured_holidays() == {D(2025, 10, 3), D(2025, 10, 27), D(2025, 12, 25)}
    settings.ERASURE_PUBLIC_HOLIDAYS = ["03/10/2025"]
    with pytest.raises(ValueError, match="not an ISO date"):
        d.configured_holidays()
