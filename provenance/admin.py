"""Admin for provenance: datasets with their record counts, read-only snapshots, lineage pages.

Datasets, records and snapshots are created through the API and its services (schema
validation, pseudonymisation, audit), so the admin only shows them. A person is looked
up by external identifier, pseudonymised first; the identifier is never stored.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from governance.admin_mixins import ReadOnlyAdmin, TabularInline
from governance.roles import AUDITOR, DPO, has_role
from provenance import selectors
from provenance.models import Dataset, Snapshot, SnapshotAmendment


class SubjectLookupForm(forms.Form):
    subject = forms.CharField(
        label="External identifier", max_length=500,
        help_text="Pseudonymised before the lookup; never stored or logged.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "size": 50}),
    )


@admin.register(Dataset)
class DatasetAdmin(ReadOnlyAdmin):
    list_display = ["name", "owner", "processing_activity", "record_count", "source_system", "created_at", "lineage_link"]
    list_filter = ["processing_activity", "owner"]
    search_fields = ["name", "description", "owner"]
    list_select_related = ["processing_activity"]
    readonly_fields = [
        "name", "description", "owner", "processing_activity", "source_system", "schema", "parents",
        "transformation", "created_by", "created_at", "updated_at", "lineage_link",
    ]
    fields = readonly_fields

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(record_count=Count("records"))

    @admin.display(description="records", ordering="record_count")
    def record_count(self, obj) -> int:
        return obj.record_count

    @admin.display(description="lineage")
    def lineage_link(self, obj) -> str:
        return format_html('<a href="{}">lineage</a>', reverse("admin:provenance_dataset_lineage", args=[obj.pk]))

    def get_urls(self):
        return [
            path("<int:pk>/lineage/", self.admin_site.admin_view(self.lineage_view), name="provenance_dataset_lineage"),
            path("subject-lineage/", self.admin_site.admin_view(self.subject_lineage_view), name="provenance_subject_lineage"),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        extra = {"subject_lineage_url": reverse("admin:provenance_subject_lineage"), **(extra_context or {})}
        return super().changelist_view(request, extra_context=extra)

    def lineage_view(self, request, pk: int):
        dataset = get_object_or_404(Dataset.objects.select_related("processing_activity"), pk=pk)
        if not self.has_view_permission(request, dataset):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "title": f"Lineage of {dataset.name}",
            "opts": self.model._meta,
            "dataset": dataset,
            "lineage": selectors.dataset_lineage(dataset=dataset),
        }
        return TemplateResponse(request, "admin/provenance/dataset_lineage.html", context)

    def subject_lineage_view(self, request):
        if not (request.user.is_superuser or has_role(request.user, DPO, AUDITOR)):
            raise PermissionDenied("Only the DPO and auditors look people up.")
        form = SubjectLookupForm(request.POST or None)
        impact = None
        searched = False
        if request.method == "POST" and form.is_valid():
            searched = True
            subject = selectors.subject_find(external_id=form.cleaned_data["subject"])
            impact = selectors.subject_impact(subject=subject) if subject is not None else None
            form = SubjectLookupForm()  # do not echo the identifier back into the page
        context = {
            **self.admin_site.each_context(request),
            "title": "Lineage of a person",
            "opts": self.model._meta,
            "form": form,
            "impact": impact,
            "searched": searched,
        }
        return TemplateResponse(request, "admin/provenance/subject_lineage.html", context)


class SnapshotAmendmentInline(TabularInline):
    model = SnapshotAmendment
    extra = 0
    can_delete = False
    fields = ["created_at", "reason", "erasure_request_id", "records_removed", "subjects_removed", "previous_root", "new_root"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Snapshot)
class SnapshotAdmin(ReadOnlyAdmin):
    """Snapshots are immutable: shown, never changed or deleted."""

    list_display = [
        "id", "dataset", "purpose", "taken_for", "kind", "lawful_basis", "included_count", "included_subjects",
        "exclusions", "short_root", "created_at",
    ]
    # A reconstruction (taken for a past moment) is never trained on.
    list_filter = ["kind", "lawful_basis", "purpose", "dataset"]
    list_select_related = ["dataset", "purpose"]
    date_hierarchy = "taken_for"
    readonly_fields = [
        "dataset", "purpose", "taken_for", "kind", "consent_known_at", "requested_by", "created_at", "completed_at",
        "lawful_basis", "compatibility", "included_count", "included_subjects", "exclusions", "merkle_root", "openlineage_run_id",
    ]
    fields = readonly_fields
    inlines = [SnapshotAmendmentInline]

    @admin.display(description="excluded")
    def exclusions(self, obj) -> str:
        return ", ".join(f"{reason.replace('_', ' ')}: {n}" for reason, n in obj.excluded_counts.items()) or "—"

    @admin.display(description="Merkle root")
    def short_root(self, obj) -> str:
        return obj.merkle_root[:16] + "…"
