"""Admin building blocks shared by the apps.

Every admin class derives from django-unfold's (the workspace's theme): ``ModelAdmin``,
``TabularInline`` and ``StackedInline`` are exported from here so an app names one home.

``ModelAdmin`` adds one rule to unfold's: a change page with nothing to edit (every field
read-only and no inline that can add, change or delete a row) shows no Save buttons, only
Close, and a Save posted to it anyway changes nothing and says so, instead of recording
"Changed nothing" as a change in the history.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.admin.utils import flatten_fieldsets, unquote
from django.http import HttpRequest, HttpResponseRedirect
from unfold.admin import ModelAdmin as UnfoldModelAdmin
from unfold.admin import StackedInline, TabularInline

__all__ = ["ModelAdmin", "ReadOnlyAdmin", "StackedInline", "TabularInline"]

# The names of the change form's own save buttons (Django's and unfold's).
SAVE_BUTTONS = ("_save", "_continue", "_addanother", "_saveasnew")
NOTHING_CHANGED = "Nothing was changed: this page is read-only."


class ModelAdmin(UnfoldModelAdmin):
    def change_form_is_read_only(self, request: HttpRequest, obj) -> bool:
        """Whether the change page of ``obj`` has nothing the user could edit: no field
        outside the read-only ones (or no change permission at all), and no inline whose
        rows could be added, deleted or edited."""
        if self.has_change_permission(request, obj):
            fields = set(flatten_fieldsets(self.get_fieldsets(request, obj)))
            if fields - set(self.get_readonly_fields(request, obj)):
                return False
        for inline in self.get_inline_instances(request, obj):
            if inline.has_add_permission(request, obj):
                return False
            if inline.can_delete and inline.has_delete_permission(request, obj):
                return False
            if inline.has_change_permission(request, obj):
                fields = set(flatten_fieldsets(inline.get_fieldsets(request, obj)))
                if fields - set(inline.get_readonly_fields(request, obj)):
                    return False
        return True

    def _posts_a_submit_line_action(self, request: HttpRequest, object_id: str) -> bool:
        # unfold's actions_submit_line are buttons of the change form: they must go through.
        return any(action.action_name in request.POST for action in self.get_actions_submit_line(request, object_id))

    def _refuses_post_of_read_only_page(self, request: HttpRequest, object_id: str | None) -> bool:
        """A save posted to an existing record's read-only page (a resubmitted form, an old
        tab): answered with a message, never recorded as a change."""
        if request.method != "POST" or object_id is None or not any(name in request.POST for name in SAVE_BUTTONS):
            return False
        if self._posts_a_submit_line_action(request, object_id):
            return False
        obj = self.get_object(request, unquote(object_id))
        return (
            obj is not None and self.has_view_permission(request, obj) and self.change_form_is_read_only(request, obj)
        )

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        if self._refuses_post_of_read_only_page(request, object_id):
            self.message_user(request, NOTHING_CHANGED, messages.INFO)
            return HttpResponseRedirect(request.get_full_path())
        return super().changeform_view(request, object_id, form_url, extra_context)

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if change and obj is not None and self.change_form_is_read_only(request, obj):
            context.update(
                show_save=False, show_save_and_continue=False, show_save_and_add_another=False, show_save_as_new=False
            )
        return super().render_change_form(request, context, add=add, change=change, form_url=form_url, obj=obj)


class ReadOnlyAdmin(ModelAdmin):
    """Records written only through services (append-only ledgers, immutable snapshots,
    training runs): viewable in the admin, never added, changed or deleted there. Their pages
    have no Save button; a Save posted anyway is answered "nothing was changed", any other
    post to them is refused (403), as Django refuses a change without permission."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
