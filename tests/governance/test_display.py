"""How the workspace writes figures for people (governance.display)."""

from __future__ import annotations

from datetime import UTC, datetime

from governance import display


def test_numbers_keep_at_most_four_significant_digits_and_counts_stay_exact():
    assert display.number(2.9945933710672854) == "2.99"
    assert display.number(0.012345) == "0.0123"
    assert display.number(12345.6) == "12,300"
    assert display.number(12345) == "12,345"  # a count is exact
    assert display.number(float("inf")) == "∞" and display.number(None) == "—"
    assert display.number(0.5, unit="s") == "0.5 s"
    assert display.percent(0.0312) == "3.12%"
    assert display.epsilon(None) == "∞ (not private)" and display.delta(1e-5) == "1e-5"


def test_moments_have_no_microseconds():
    moment = datetime(2026, 12, 1, 19, 25, 3, 123456, tzinfo=UTC)
    assert display.moment(moment) == "1 Dec 2026, 19:25 UTC"


def test_audit_details_show_labels_moments_and_words(db):
    # rights registers its choices at start-up: the ground's code reads as its words.
    from rights.models import ErasureGround

    assert display.detail_value("ground", "17_1_a") == ErasureGround("17_1_a").label
    assert display.detail_value("expires_at", "2027-12-01T21:12:35.980618+00:00") == "1 Dec 2027, 21:12 UTC"
    assert display.detail_value("data_held", True) == "yes"
    assert display.detail_value("interval", [0.123456, 0.5]) == "0.123, 0.5"
    assert display.detail_value("unknown_key", "17_1_a") == "17_1_a"  # unregistered: as recorded
