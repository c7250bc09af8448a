"""Admin pages of decisions: the decision log (a chart on each model version's page and
on the dashboard), each decision with its explanation summary and reviews, the reviews of
contested decisions by deadline with the form a DPO decides them with, and the
input-retention option of each processing activity. Every write is a decisions.services call."""

from __future__ import annotations

from datetime import timedelta

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone

from decisions import selectors, services
from decisions.display import output_text
from decisions.models import (
    Decision,
    DecisionInput,
    DecisionInputRetention,
    DecisionReview,
    ReviewOutcome,
    ReviewStatus,
)
from governance import display
from governance.admin_mixins import ModelAdmin, ReadOnlyAdmin, TabularInline
from governance.admin_panels import Chart, Panel, PanelsAdminMixin, Series, facts
from governance.roles import DPO, has_role
from governance.services import ServiceError
from mlops.admin import model_version_panel_register
from mlops.models import OutputPolicyKind

LOG_DAYS = 30
METHOD_LABELS = {
    "integrated_gradients": "Integrated Gradients",
    "shapley_value_sampling": "Shapley value sampling",
    "kernel_shap": "KernelSHAP",
}


def _version_link(version) -> str:
    return display.link(reverse("admin:mlops_modelversion_change", args=[version.pk]), str(version))


def _decision_link(decision_id: int) -> str:
    return display.link(reverse("admin:decisions_decision_change", args=[decision_id]), f"Decision {decision_id}")


def policy_text(kind: str) -> str:
    # A decision records the policy's kind, not its digits: the output shown has them.
    return display.label(OutputPolicyKind, kind).removesuffix(" (k digits)")


def _signed_points(contribution: float) -> str:
    """A contribution to the probability of the decided outcome, in percentage points."""
    points = float(contribution) * 100
    return f"{'+' if points > 0 else ''}{display.number(points)} points"


def decision_panels(request, decision: Decision) -> list[Panel]:
    """The decision's explanation (what moved it, from the schema's baseline) and, for a DPO,
    the input kept for its review: on the decision's page and on its reviews' pages."""
    panels = []
    e = decision.explanation
    if e and e.get("withheld"):
        panels.append(Panel("Explanation", display.paragraphs(f"Attributions withheld: {e.get('reason')}.")))
    elif e:
        rows = [[t["feature"], t["direction"], _signed_points(t["contribution"])] for t in e.get("top_features", [])]
        body = display.table(["Feature", "Direction", "Contribution"], rows, empty="No attribution recorded.")
        hint = e.get("counterfactual_feature")
        caption = (
            f"{display.label(METHOD_LABELS, e.get('method'))}: how much each feature, moved from the schema's "
            "reference value to the person's, raised or lowered the probability of the decided outcome "
            f"(in percentage points; convergence delta {display.number(e.get('convergence_delta'))}). "
            + (f"A change of '{hint}' alone would flip the decision." if hint else
               "No single change of an actionable feature flips it.")
        )
        panels.append(Panel("Explanation (what moved the decision, from the schema's baseline)", body,
                            caption=caption))
    else:
        panels.append(Panel("Explanation", display.paragraphs("Not explained: the request asked for no explanation.")))
    kept = DecisionInput.objects.filter(decision=decision).select_related("retention").first()
    if kept is not None and has_role(request.user, DPO):
        rows = [(name, value if isinstance(value, str) else display.number(value))
                for name, value in sorted(kept.features.items())]
        panels.append(Panel(
            "Input kept for review", facts(rows),
            caption=f"Kept under '{kept.retention.article}' until {display.moment(kept.expires_at)}, "
                    "then deleted by the purge.",
        ))
    return panels


class OutputPolicyFilter(admin.SimpleListFilter):
    """The output policy a decision was shown under, by its name rather than its code."""

    title = "output policy"
    parameter_name = "output_policy"

    def lookups(self, request, model_admin):
        return list(OutputPolicyKind.choices)

    def queryset(self, request, queryset):
        return queryset.filter(output_policy=self.value()) if self.value() else queryset


def decision_log_chart(*, model_version_id: int | None, days: int = LOG_DAYS) -> tuple[Chart | None, int]:
    """Decisions per day and outcome over the last ``days`` days (one grouped query)."""
    today = timezone.localdate()
    first = today - timedelta(days=days - 1)
    since = timezone.make_aware(timezone.datetime.combine(first, timezone.datetime.min.time()))
    counts = selectors.decision_log_counts(model_version_id=model_version_id, since=since)
    if not counts:
        return None, 0
    outcomes = sorted({r["outcome"] for r in counts})
    labels = [first + timedelta(days=i) for i in range(days)]
    table = {(r["day"], r["outcome"]): 0 for r in counts}
    for r in counts:
        table[(r["day"], r["outcome"])] += r["decisions"]
    series = [Series(f"Outcome {o}", [table.get((day, o), 0) for day in labels]) for o in outcomes]
    chart = Chart("bar", [f"{d.day} {d:%b}" for d in labels], series, y_title="Decisions", stacked=True)
    return chart, sum(r["decisions"] for r in counts)


@model_version_panel_register
def decisions_panel(request, model_version) -> Panel | None:
    """The version's decision log, on its page (decisions stands above mlops, so it adds
    the panel rather than mlops reaching up)."""
    if not request.user.has_perm("decisions.view_decision"):
        return None
    chart, total = decision_log_chart(model_version_id=model_version.pk)
    url = reverse("admin:decisions_decision_changelist") + f"?model_version__id__exact={model_version.pk}"
    caption = (f"{display.number(total)} decisions in the last {LOG_DAYS} days, by outcome per day. "
               f"The log is kept {display.number(settings.DECISION_LOG_RETENTION_DAYS)} days.")
    return Panel("Decisions (Art. 22)", display.link(url, "All decisions of this version"),
                 chart=chart, caption=caption if chart else "No decision in the last 30 days.")


class ReviewInline(TabularInline):
    model = DecisionReview
    fields = ["review_link", "status", "requested_shown", "due_at", "outcome", "reviewer"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    @admin.display(description="review")
    def review_link(self, obj):
        return display.link(reverse("admin:decisions_decisionreview_change", args=[obj.pk]), f"Review {obj.pk}")

    @admin.display(description="requested")
    def requested_shown(self, obj):
        return display.moment(obj.requested_at)

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Decision)
class DecisionAdmin(PanelsAdminMixin, ReadOnlyAdmin):
    list_display = ["__str__", "version_shown", "decided_shown", "outcome", "policy_shown", "explained",
                    "attributions_withheld", "contested"]
    list_filter = [OutputPolicyFilter, "attributions_withheld", "model_version"]
    search_fields = ["id", "input_hash"]
    date_hierarchy = "decided_at"
    inlines = [ReviewInline]
    fields = ["version_shown", "decided_shown", "outcome", "output_shown", "policy_shown", "attributions_withheld",
              "subject_shown", "input_hash", "batch", "position"]
    readonly_fields = fields

    def get_queryset(self, request):
        return selectors.decisions_visible()

    @admin.display(description="output as shown")
    def output_shown(self, obj):
        return output_text(obj.output)

    @admin.display(description="output policy", ordering="output_policy")
    def policy_shown(self, obj):
        return policy_text(obj.output_policy)

    @admin.display(description="model version", ordering="model_version")
    def version_shown(self, obj):
        return _version_link(obj.model_version)

    @admin.display(description="decided", ordering="decided_at")
    def decided_shown(self, obj):
        return display.moment(obj.decided_at)

    @admin.display(boolean=True, description="explained")
    def explained(self, obj):
        return bool(obj.explanation) and not obj.explanation.get("withheld")

    @admin.display(boolean=True, description="contested", ordering="contested")
    def contested(self, obj):
        return obj.contested

    @admin.display(description="person decided about")
    def subject_shown(self, obj):
        return "named (held as a pseudonym)" if obj.subject_pseudonym else "not named"

    def get_panels(self, request, obj: Decision) -> list[Panel]:
        return decision_panels(request, obj)


class ReviewDeadlineFilter(admin.SimpleListFilter):
    """Open reviews past their deadline (the dashboard's "Reviews overdue" opens this list)."""

    title = "deadline"
    parameter_name = "deadline"

    def lookups(self, request, model_admin):
        return [("overdue", "Overdue"), ("due_7", "Due within 7 days")]

    def queryset(self, request, queryset):
        today = timezone.localdate()
        if self.value() == "overdue":
            return queryset.filter(status=ReviewStatus.OPEN, due_at__lt=today)
        if self.value() == "due_7":
            return queryset.filter(status=ReviewStatus.OPEN, due_at__gte=today, due_at__lte=today + timedelta(days=7))
        return queryset


class ReviewDecideForm(forms.ModelForm):
    """The reviewer's decision: outcome, reasons and, for 'changed', the new label."""

    new_label = forms.CharField(required=False, help_text="For 'changed': the new outcome (one of the model's classes).")

    class Meta:
        model = DecisionReview
        fields = ["outcome", "reasons"]
        widgets = {"reasons": forms.Textarea(attrs={"rows": 4})}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "outcome" in self.fields:
            self.fields["outcome"].choices = [("", "---------"), *ReviewOutcome.choices]
            self.fields["outcome"].required = True
            self.fields["reasons"].required = True


@admin.register(DecisionReview)
class DecisionReviewAdmin(PanelsAdminMixin, ModelAdmin):
    form = ReviewDecideForm
    list_display = ["__str__", "decision_shown", "version_shown", "status", "due_at", "overdue", "outcome", "reviewer"]
    list_filter = [ReviewDeadlineFilter, "status", "outcome", "channel"]
    search_fields = ["id", "decision__id"]
    ordering = ["due_at", "id"]
    state_fields = ["decision_shown", "version_shown", "decision_outcome", "status", "reason", "channel",
                    "requested_shown", "due_at", "overdue", "reviewer_shown", "decided_shown", "new_output_shown"]

    def get_queryset(self, request):
        return selectors.reviews_visible()

    def get_fields(self, request, obj=None):
        if obj is not None and obj.status == ReviewStatus.OPEN and self.has_change_permission(request, obj):
            return [*self.state_fields, "outcome", "reasons", "new_label"]
        return [*self.state_fields, "outcome", "reasons"]

    def get_readonly_fields(self, request, obj=None):
        if obj is not None and obj.status == ReviewStatus.OPEN and self.has_change_permission(request, obj):
            return self.state_fields
        return [*self.state_fields, "outcome", "reasons"]

    @admin.display(description="decision")
    def decision_shown(self, obj):
        return _decision_link(obj.decision_id)

    @admin.display(description="model version")
    def version_shown(self, obj):
        return _version_link(obj.decision.model_version)

    @admin.display(description="outcome contested")
    def decision_outcome(self, obj):
        return output_text(obj.decision.output)

    @admin.display(description="reviewer")
    def reviewer_shown(self, obj):
        return str(obj.reviewer) if obj.reviewer else display.DASH

    @admin.display(description="new decision")
    def new_output_shown(self, obj):
        return output_text(obj.new_output) if obj.new_output else "none (only for the outcome 'changed')"

    def get_panels(self, request, obj: DecisionReview) -> list[Panel]:
        # The reviewer reads what the model based the contested decision on, on the same page.
        return decision_panels(request, obj.decision)

    @admin.display(description="requested")
    def requested_shown(self, obj):
        return display.moment(obj.requested_at)

    @admin.display(description="decided")
    def decided_shown(self, obj):
        return display.moment(obj.decided_at)

    @admin.display(boolean=True, description="overdue")
    def overdue(self, obj):
        return obj.status == ReviewStatus.OPEN and obj.due_at < timezone.localdate()

    def has_add_permission(self, request):
        return False  # a review is opened by contesting a decision (POST /decisions/{id}/contest/)

    def has_delete_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        # Only a DPO decides, and only an open review (the service refuses the rest again).
        if not has_role(request.user, DPO):
            return False
        return obj is None or obj.status == ReviewStatus.OPEN

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        new_label = (data.get("new_label") or "").strip()
        services.decision_review_decide(
            review=obj, outcome=data["outcome"], reasons=data["reasons"], reviewer=request.user,
            new_output={"label": new_label} if new_label else None,
        )

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ServiceError as exc:
            # Nothing was saved; say why on the same page.
            self.message_user(request, f"Not decided: {exc}", messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def log_change(self, request, obj, message):
        # The audit chain records the decision (decision_review.decided); the admin's history too.
        return super().log_change(request, obj, "Decided the review")


class RetentionForm(forms.ModelForm):
    class Meta:
        model = DecisionInputRetention
        fields = ["processing_activity", "days", "article", "reason"]


@admin.register(DecisionInputRetention)
class DecisionInputRetentionAdmin(ModelAdmin):
    form = RetentionForm
    list_display = ["option_shown", "processing_activity", "days", "article", "set_by", "created_shown"]
    list_filter = ["processing_activity"]

    @admin.display(description="option", ordering="id")
    def option_shown(self, obj):
        return f"Inputs kept {obj.days} days" if obj.days else "Inputs not kept"

    @admin.display(description="set", ordering="created_at")
    def created_shown(self, obj):
        return display.moment(obj.created_at)

    def get_readonly_fields(self, request, obj=None):
        # Append-only: a recorded option is read, and a change is a new one.
        return [] if obj is None else ["processing_activity", "days", "article", "reason", "set_by", "created_shown"]

    def get_fields(self, request, obj=None):
        base = ["processing_activity", "days", "article", "reason"]
        return base if obj is None else [*base, "set_by", "created_shown"]

    def has_add_permission(self, request):
        return has_role(request.user, DPO) and super().has_add_permission(request)

    def has_change_permission(self, request, obj=None):
        return obj is None and has_role(request.user, DPO)

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        saved = services.decision_input_retention_set(
            processing_activity=data["processing_activity"], days=data["days"], article=data.get("article") or "",
            reason=data["reason"], actor=request.user,
        )
        obj.pk = saved.pk
        obj._state.adding = False

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ServiceError as exc:
            self.message_user(request, f"Not saved: {exc}", messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())
