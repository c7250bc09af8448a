"""Moments in time as clients send them, made safe to store and to query.

Every date-time the system accepts (consent given, erasure received, a filter bound) goes
through here, so the same input gets the same answer everywhere: an ISO 8601 string with a
time zone, converted to UTC. Converting matters beyond tidiness: Python accepts offsets up to
±23:59 and years 1–9999, PostgreSQL only offsets up to ±15:59, so an unconverted moment such
as ``0632-08-19T12:06:29+18:38`` would reach the database and fail there as a server error.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import django_filters
from django import forms
from django.utils import timezone
from django.utils.dateparse import parse_datetime

EXAMPLE = "2025-03-01T10:15:00Z"


# The earliest moment a governance record may carry. A consent given or a request received
# before it is a typing error (0025 for 2025), never history this system could hold.
EARLIEST_RECORDED = datetime(1970, 1, 1, tzinfo=UTC)


def moment_parse(value: Any, *, require_timezone: bool = True, earliest: datetime | None = None) -> datetime:
    """``value`` (an ISO 8601 string or an aware datetime) as an aware datetime in UTC.

    Raises ValueError with a reason a client can act on; callers add the field's name.
    A naive moment is refused when ``require_timezone``, else read in the configured TIME_ZONE;
    one before ``earliest`` is refused (filters pass none: any bound is a fair question).
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        text = value.strip()
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            try:
                moment = parse_datetime(text)
            except ValueError as exc:  # well formed but impossible, e.g. minute 99
                raise ValueError(f"not a valid date-time ({exc}).") from None
        if moment is None:
            raise ValueError(f"not an ISO 8601 date-time, e.g. {EXAMPLE}.")
    else:
        raise ValueError(f"expected an ISO 8601 date-time string, e.g. {EXAMPLE}.")
    if moment.tzinfo is None or moment.utcoffset() is None:
        if require_timezone:
            raise ValueError("the time must carry a time zone (e.g. Z or +01:00).")
        moment = timezone.make_aware(moment)
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range: years 1 to 9999 in UTC.") from None
    if earliest is not None and moment < earliest:
        raise ValueError(f"before {earliest:%Y-%m-%d}, which no record here can be; check the year.")
    return moment


def reason_as_sentence(exc: ValueError) -> str:
    """A moment_parse reason as a message of its own (callers that prefix the field keep it lower-case)."""
    reason = str(exc)
    return reason[:1].upper() + reason[1:]


class UTCIsoDateTimeField(forms.DateTimeField):
    """A filter's date-time: ISO 8601, converted to UTC, with a 400 for impossible values."""

    def to_python(self, value: Any) -> datetime | None:
        if value in self.empty_values:
            return None
        try:
            return moment_parse(value, require_timezone=False)
        except ValueError as exc:
            raise forms.ValidationError(reason_as_sentence(exc), code="invalid") from None


class UTCIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    # A subclass, so the OpenAPI schema still says format: date-time.
    field_class = UTCIsoDateTimeField
