"""Admin for provenance: datasets with their record counts, read-only snapshots, lineage pages.

Datasets, records and snapshots are created through the API and its services (schema
validation, pseudonymisation, audit), so the admin only shows them. A person is looked
up by external identifier, pseudonymised first; the identifier is never stored.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.dateparse import parse_datetime
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from governance import display
from governance.admin_mixins import ReadOnlyAdmin, TabularInline
from governance.admin_panels import Panel, PanelsAdminMixin, chain, facts, paragraphs, together
from governance.models import LawfulBasis
from governance.roles import AUDITOR, DPO, has_role
from provenance import selectors
from provenance.display import EXCLUSION_LABELS
from provenance.downstream import trained_on_snapshots
from provenance.models import Dataset, Snapshot, SnapshotAmendment


class SubjectLookupForm(forms.Form):
    subject = forms.CharField(
        label="External identifier", max_length=500,
        help_text="Pseudonymised before the lookup; never stored or logged.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "size": 50}),
    )


FEATURE_TYPE_LABELS = {"float": "number (decimal)", "int": "number (whole)", "bool": "yes / no", "category": "category"}


def _url(name: str, *args) -> str:
    return reverse(f"admin:{name}", args=args)


def _yes(value: Any) -> str:
    return "yes" if value else display.DASH


def schema_table(schema: dict) -> SafeString:
    """A dataset's schema as a table: one row per feature, then the label."""
    schema = schema if isinstance(schema, dict) else {}
    rows = []
    features = [f for f in schema.get("features") or [] if isinstance(f, dict)]
    label = schema.get("label") if isinstance(schema.get("label"), dict) else None
    for spec, role in [*((f, "feature") for f in features), *([(label, "label")] if label else [])]:
        bounds = (f"{display.number(spec['min'])} to {display.number(spec['max'])}"
                  if "min" in spec and "max" in spec else display.DASH)
        categories = ", ".join(str(c) for c in spec.get("categories") or []) or display.DASH
        rows.append([spec.get("name", display.DASH), role, FEATURE_TYPE_LABELS.get(spec.get("type"), spec.get("type")),
                     bounds, categories, _yes(spec.get("special_category")), _yes(spec.get("sensitive"))])
    return display.table(["Name", "Role", "Type", "Bounds", "Categories", "Art. 9 special category", "Sensitive"],
                         rows, empty="No schema recorded.")


def exclusions_table(excluded_counts: dict) -> SafeString:
    counts = excluded_counts if isinstance(excluded_counts, dict) else {}
    rows = [[EXCLUSION_LABELS.get(reason, reason.replace("_", " ")), display.number(n)] for reason, n in counts.items()]
    return display.table(["Why left out", "Records"], rows, empty="No record was left out.")


@admin.register(Dataset)
class DatasetAdmin(PanelsAdminMixin, ReadOnlyAdmin):
    list_display = ["name", "owner", "processing_activity", "record_count", "source_system", "created_shown", "lineage_link"]
    list_filter = ["processing_activity", "owner"]
    search_fields = ["name", "description", "owner"]
    list_select_related = ["processing_activity"]
    readonly_fields = [
        "name", "description", "owner", "activity_link", "source_system", "transformation", "created_by",
        "created_shown", "updated_shown", "lineage_link",
    ]
    fields = readonly_fields

    def get_queryset(self, request):
        # Current versions: a rectified record counts once (its superseded version is kept
        # for the snapshots that hold it, not as another record).
        return super().get_queryset(request).annotate(
            record_count=Count("records", filter=Q(records__superseded_at__isnull=True))
        )

    @admin.display(description="records", ordering="record_count")
    def record_count(self, obj) -> int:
        return obj.record_count

    @admin.display(description="lineage")
    def lineage_link(self, obj) -> str:
        return format_html('<a href="{}">lineage</a>', reverse("admin:provenance_dataset_lineage", args=[obj.pk]))

    @admin.display(description="processing activity")
    def activity_link(self, obj) -> str:
        activity = obj.processing_activity
        return display.link(_url("governance_processingactivity_change", activity.pk), activity.name)

    @admin.display(description="created", ordering="created_at")
    def created_shown(self, obj) -> str:
        return display.moment(obj.created_at)

    @admin.display(description="updated")
    def updated_shown(self, obj) -> str:
        return display.moment(obj.updated_at)

    def get_panels(self, request, obj: Dataset) -> list[Panel]:
        lineage = selectors.dataset_lineage(dataset=obj)
        counts = facts([
            ("Records", display.number(lineage["record_count"])),
            ("People", display.number(lineage["subject_count"])),
            ("Snapshots", display.number(len(lineage["snapshots"]))),
            ("Processing activity", self.activity_link(obj)),
        ])
        parents = [display.link(_url("provenance_dataset_change", d["id"]), d["name"]) for d in lineage["ancestors"]]
        derived = [display.link(_url("provenance_dataset_change", d["id"]), d["name"]) for d in lineage["derived"]]
        steps = [*([together(parents)] if parents else []), format_html("<strong>{}</strong>", obj.name),
                 *([together(derived)] if derived else [])]
        lineage_body = format_html(
            "{}{}", chain(steps),
            paragraphs(f"Derived by: {obj.transformation}" if obj.transformation else "",
                       "An original dataset." if not parents else ""),
        )
        snapshots = [
            [display.link(_url("provenance_snapshot_change", s["id"]), f"Snapshot {s['id']}"), s["purpose"],
             display.moment(parse_datetime(s["taken_for"]) if s["taken_for"] else None),
             display.number(s["included_count"]), display.number(s["included_subjects"]),
             display.number(sum(v for v in (s["excluded_counts"] or {}).values() if isinstance(v, int)))]
            for s in lineage["snapshots"]
        ]
        return [
            Panel("Records", counts),
            Panel("Schema", schema_table(obj.schema), wide=True),
            Panel("Lineage", lineage_body, caption="Datasets it was derived from → this dataset → datasets derived from it."),
            Panel("Snapshots", display.table(["Snapshot", "Purpose", "Taken for", "Records", "People", "Left out"],
                                             snapshots, empty="No snapshot taken yet."), wide=True),
        ]

    def get_urls(self):
        return [
            path("<int:pk>/lineage/", self.admin_site.admin_view(self.lineage_view), name="provenance_dataset_lineage"),
            path("subject-lineage/", self.admin_site.admin_view(self.subject_lineage_view), name="provenance_subject_lineage"),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        # The person page is the rights app's (it lists their requests too); by URL name only.
        extra = {"subject_lineage_url": reverse("admin:rights_person_search"), **(extra_context or {})}
        return super().changelist_view(request, extra_context=extra)

    def lineage_view(self, request, pk: int):
        dataset = get_object_or_404(Dataset.objects.select_related("processing_activity"), pk=pk)
        if not self.has_view_permission(request, dataset):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "title": f"Lineage of {dataset.name}",
            "opts": self.model._meta,
            "breadcrumbs": [
                {"url": reverse("admin:provenance_dataset_changelist"), "text": "Datasets"},
                {"url": _url("provenance_dataset_change", dataset.pk), "text": dataset.name},
                {"text": "lineage"},
            ],
            "workspace_panels": self.lineage_panels(dataset),
        }
        return TemplateResponse(request, "admin/workspace/panels_page.html", context)

    @staticmethod
    def lineage_panels(dataset: Dataset) -> list[Panel]:
        """Upstream, downstream and what was trained on it, every step linked."""
        lineage = selectors.dataset_lineage(dataset=dataset)
        activities = [
            [display.link(_url("governance_processingactivity_change", a["id"]), a["name"]),
             display.label(LawfulBasis, a["lawful_basis"]), ", ".join(a["purposes"]) or display.DASH,
             ", ".join(f"{r['data_category']}: {display.number(round(r['retention_days']))} days" for r in a["retention"])
             or "none recorded"]
            for a in lineage["processing_activities"]
        ]
        def dataset_link(d):
            return display.link(_url("provenance_dataset_change", d["id"]), d["name"])

        ancestors = [dataset_link(d) for d in lineage["ancestors"]]
        derived = [dataset_link(d) for d in lineage["derived"]]
        steps = [*([together(ancestors)] if ancestors else []), format_html("<strong>{}</strong>", dataset.name),
                 *([together(derived)] if derived else [])]
        snapshots = [
            [display.link(_url("provenance_snapshot_change", s["id"]), f"Snapshot #{s['id']}"), s["purpose"],
             display.moment(parse_datetime(s["taken_for"]) if s["taken_for"] else None),
             display.label(LawfulBasis, s["lawful_basis"]),
             f"{display.number(s['included_count'])} records of {display.number(s['included_subjects'])} people",
             ", ".join(f"{EXCLUSION_LABELS.get(r, r)}: {n}" for r, n in (s["excluded_counts"] or {}).items() if n)
             or "none",
             "unchanged" if s["current_merkle_root"] == s["merkle_root"] else f"amended: {s['current_merkle_root'][:16]}…"]
            for s in lineage["snapshots"]
        ]
        runs = [
            [display.link(_url("mlops_trainingrun_change", r["id"]), f"Training run {r['id']} ({r['name']})"),
             f"Snapshot {r['snapshot']}", r["status"].replace("_", " ").capitalize(),
             format_html_join(", ", "{}", (
                 (display.link(_url("mlops_modelversion_change", m["id"]), f"{m['name']} v{m['version']}"),)
                 for m in lineage["model_versions"] if m["training_run"] == r["id"])) or display.DASH]
            for r in lineage["training_runs"]
        ]
        counts = (f"{display.number(lineage['record_count'])} records of {display.number(lineage['subject_count'])} "
                  f"subjects; owner {dataset.owner}.")
        return [
            Panel("Derived from and into", format_html("{}{}", chain(steps), paragraphs(
                counts, f"Derived by: {dataset.transformation}" if dataset.transformation else ""))),
            Panel("Processing activities", display.table(["Activity", "Lawful basis", "Purposes", "Retention"], activities),
                  wide=True),
            Panel("Snapshots", display.table(["Snapshot", "Purpose", "Taken for", "Basis", "Included", "Left out",
                                              "Merkle root"], snapshots, empty="No snapshot taken yet."), wide=True),
            Panel("Training runs and model versions", display.table(
                ["Training run", "Snapshot", "Status", "Model versions"], runs,
                empty="No training run on these snapshots."), wide=True),
        ]

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
    fields = ["sequence", "created_shown", "reason", "erasure_request_id", "records_removed", "subjects_removed", "roots"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="when")
    def created_shown(self, obj) -> str:
        return display.moment(obj.created_at)

    @admin.display(description="Merkle root before → after")
    def roots(self, obj) -> str:
        return f"{obj.previous_root[:12]}… → {obj.new_root[:12]}…"


@admin.register(Snapshot)
class SnapshotAdmin(PanelsAdminMixin, ReadOnlyAdmin):
    """Snapshots are immutable: shown, never changed or deleted."""

    list_display = [
        "__str__", "dataset", "purpose", "taken_for_shown", "kind", "basis", "included_count", "included_subjects",
        "exclusions", "short_root",
    ]
    # A reconstruction (taken for a past moment) is never trained on.
    list_filter = ["kind", "lawful_basis", "purpose", "dataset"]
    list_select_related = ["dataset", "purpose"]
    date_hierarchy = "taken_for"
    readonly_fields = [
        "dataset_link", "purpose", "taken_for_shown", "kind_shown", "basis", "compatibility", "included_count",
        "included_subjects", "merkle_root", "current_root", "consent_known_shown", "requested_by", "created_shown",
        "completed_shown", "openlineage_run_id",
    ]
    fields = readonly_fields
    inlines = [SnapshotAmendmentInline]

    @admin.display(description="excluded")
    def exclusions(self, obj) -> str:
        counts = obj.excluded_counts if isinstance(obj.excluded_counts, dict) else {}
        return ", ".join(f"{EXCLUSION_LABELS.get(r, r)}: {n}" for r, n in counts.items() if n) or "none"

    @admin.display(description="Merkle root")
    def short_root(self, obj) -> str:
        return obj.merkle_root[:16] + "…"

    @admin.display(description="taken for", ordering="taken_for")
    def taken_for_shown(self, obj) -> str:
        return display.moment(obj.taken_for)

    @admin.display(description="lawful basis", ordering="lawful_basis")
    def basis(self, obj) -> str:
        return display.label(LawfulBasis, obj.lawful_basis)

    @admin.display(description="dataset")
    def dataset_link(self, obj) -> str:
        return display.link(_url("provenance_dataset_change", obj.dataset_id), obj.dataset.name)

    @admin.display(description="kind")
    def kind_shown(self, obj) -> str:
        # The label says whether it may be trained on ("Current (may be trained on)").
        return obj.get_kind_display()

    @admin.display(description="Merkle root now (after amendments)")
    def current_root(self, obj) -> str:
        current = selectors.snapshot_current_root(snapshot=obj)
        return "unchanged since it was taken" if current == obj.merkle_root else current

    @admin.display(description="consent ledger read as of")
    def consent_known_shown(self, obj) -> str:
        return display.moment(obj.consent_known_at)

    @admin.display(description="created")
    def created_shown(self, obj) -> str:
        return display.moment(obj.created_at)

    @admin.display(description="completed")
    def completed_shown(self, obj) -> str:
        return display.moment(obj.completed_at)

    def get_panels(self, request, obj: Snapshot) -> list[Panel]:
        runs, models = trained_on_snapshots([obj.pk])
        rows = [[display.link(_url("mlops_trainingrun_change", r.pk), f"Training run {r.pk} ({r.name})"),
                 ", ".join(f"{m.name} v{m.version}" for m in models if m.training_run_id == r.pk) or display.DASH]
                for r in runs]
        return [
            Panel("Records left out, by reason", exclusions_table(obj.excluded_counts)),
            Panel("Trained on it", display.table(["Training run", "Model versions"], rows,
                                                 empty="No training run has used this snapshot.")),
        ]
