"""Admin building blocks shared by the apps.

Every admin class derives from django-unfold's (the workspace's theme): ``ModelAdmin``,
``TabularInline`` and ``StackedInline`` are re-exported from here so an app names one home.
"""

from __future__ import annotations

from unfold.admin import ModelAdmin, StackedInline, TabularInline

__all__ = ["ModelAdmin", "ReadOnlyAdmin", "StackedInline", "TabularInline"]


class ReadOnlyAdmin(ModelAdmin):
    """Records written only through services (append-only ledgers, immutable snapshots,
    training runs): viewable in the admin, never added, changed or deleted there."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
