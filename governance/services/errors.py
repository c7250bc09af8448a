"""What every governance service shares: the errors it refuses with, the parsing of a
client's date-time into one, and the actor an audit event names.

It imports nothing else from the package, so every other module (and every app above
governance) can import it without a cycle.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from governance.moments import EARLIEST_RECORDED, moment_parse, reason_as_sentence


class ServiceError(Exception):
    """A request the service refuses: answered as 400 naming ``field`` when given."""

    def __init__(self, message: str, *, field: str | None = None, **extra: Any):
        super().__init__(message)
        self.field = field
        self.extra = extra


class ServiceConflict(ServiceError):
    """A request refused because of the current state of a record: answered as 409."""


def moment_for_field(value: Any, *, field: str, require_timezone: bool = True, recorded: bool = True) -> datetime:
    """A client's date-time in UTC (see governance.moments), or a 400 naming ``field``.

    ``recorded``: the moment goes into a governance record, so it may not precede 1970."""
    try:
        return moment_parse(value, require_timezone=require_timezone, earliest=EARLIEST_RECORDED if recorded else None)
    except ValueError as exc:
        raise ServiceError(reason_as_sentence(exc), field=field) from None


SYSTEM_ACTOR = "system"


def _actor_name(actor: Any) -> str:
    if actor is None:
        return SYSTEM_ACTOR
    if isinstance(actor, str):
        return actor
    return getattr(actor, "get_username", lambda: str(actor))()
