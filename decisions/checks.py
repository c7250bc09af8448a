"""System checks of the decision settings, run at every start (``manage.py check``,
runserver, the web and worker entrypoints)."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, register

# AI Act Art. 26(6): deployers keep the logs of a high-risk system for at least six months.
MIN_DECISION_LOG_RETENTION_DAYS = 183


@register()
def decision_log_retention_check(app_configs=None, **kwargs) -> list[Error]:
    days = getattr(settings, "DECISION_LOG_RETENTION_DAYS", MIN_DECISION_LOG_RETENTION_DAYS)
    if not isinstance(days, int) or days < MIN_DECISION_LOG_RETENTION_DAYS:
        return [Error(
            f"DECISION_LOG_RETENTION_DAYS is {days!r}: the decision log must be kept at least "
            f"{MIN_DECISION_LOG_RETENTION_DAYS} days (six months, AI Act Art. 26(6)).",
            hint=f"Set DECISION_LOG_RETENTION_DAYS to {MIN_DECISION_LOG_RETENTION_DAYS} or more.",
            id="decisions.E001",
        )]
    return []
