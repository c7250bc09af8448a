"""List filters of the erasure requests' admin page that a plain field filter cannot express:
the deadline state (read from the effective deadline, extension included) and a failed
execution. The dashboard's counts link to them, so each count and its list agree.

Both apply the conditions of ``rights.selectors`` to the page's queryset, which is
``erasure_request_queryset()`` (annotated with ``effective_due``).
"""

from __future__ import annotations

from django.contrib import admin

from rights import selectors

# The dashboard and the deadline digest name the same horizon.
DUE_SOON_DAYS = 7

OVERDUE = "overdue"
DUE_SOON = "due_7_days"
FAILED = "failed"


class ErasureDeadlineFilter(admin.SimpleListFilter):
    """``?deadline=overdue``: open and past the deadline; ``?deadline=due_7_days``: open and
    due today or within the next 7 days."""

    title = "deadline"
    parameter_name = "deadline"

    def lookups(self, request, model_admin):
        return [(OVERDUE, "Overdue"), (DUE_SOON, f"Due within {DUE_SOON_DAYS} days")]

    def queryset(self, request, queryset):
        if self.value() == OVERDUE:
            return queryset.filter(selectors.erasure_requests_overdue_q())
        if self.value() == DUE_SOON:
            return queryset.filter(selectors.erasure_requests_due_within_q(days=DUE_SOON_DAYS))
        return queryset


class ErasureExecutionFilter(admin.SimpleListFilter):
    """``?execution=failed``: in progress with a failed step, waiting for the DPO."""

    title = "execution"
    parameter_name = "execution"

    def lookups(self, request, model_admin):
        return [(FAILED, "Failed (a step failed)")]

    def queryset(self, request, queryset):
        if self.value() == FAILED:
            return queryset.filter(selectors.erasure_requests_failed_q())
        return queryset
