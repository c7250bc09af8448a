"""The privacy-budget ledger: caps set by the DPO, reservations at queue time, settlement.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from governance.roles import DPO, has_role
from governance.services import ServiceConflict, audit_event_record
from mlops import ledger
from mlops.models import (
    LedgerState,
    PrivacyBudget,
    PrivacyLedgerEntry,
    TrainingRun,
)
from mlops.services.config import _check_number, _json_number, _Plan
from provenance.models import Dataset

logger = logging.getLogger(__name__)



def _ledger_reserve(*, run: TrainingRun, dataset_id: int, plan: _Plan) -> dict:
    """Add the run's planned cost to the ledger, refusing it (409) if the cap would be exceeded."""
    total = ledger.ledger_total_locked(dataset_id=dataset_id)
    budget = PrivacyBudget.objects.filter(dataset_id=dataset_id).first()
    numbers: dict = {}
    if budget is not None:
        spent = ledger.curve_from_json(total.spent_rdp)
        reserved = ledger.curve_from_json(total.reserved_rdp)
        spent_eps = math.inf if total.non_private_runs else ledger.epsilon_of_curve(spent, delta=budget.delta)
        committed = ledger.sum_curves([c for c in (spent, reserved) if c is not None])
        committed_eps = math.inf if total.non_private_runs else ledger.epsilon_of_curve(committed, delta=budget.delta)
        planned_eps = math.inf if plan.rdp is None else ledger.epsilon_of_curve(plan.rdp, delta=budget.delta)
        after = math.inf if plan.rdp is None or total.non_private_runs else ledger.epsilon_of_curve(
            ledger.sum_curves([c for c in (committed, plan.rdp) if c is not None]), delta=budget.delta
        )
        numbers = {
            "epsilon_cap": budget.epsilon_cap,
            "budget_delta": budget.delta,
            "spent_epsilon": _json_number(spent_eps),
            "committed_epsilon": _json_number(committed_eps),
            "planned_epsilon_at_budget_delta": _json_number(planned_eps),
            "epsilon_after": _json_number(after),
        }
        if after > budget.epsilon_cap:
            reason = "non-private training (ε = ∞)" if plan.rdp is None else f"ε would reach {after:.4g}"
            raise ServiceConflict(
                f"Over the privacy budget of dataset {dataset_id}: {reason} at δ={budget.delta:g}, "
                f"the cap is {budget.epsilon_cap:g} (spent {spent_eps:.4g}, including runs in progress "
                f"{committed_eps:.4g}, this run {planned_eps:.4g}).",
                **numbers,
            )
    PrivacyLedgerEntry.objects.create(
        dataset_id=dataset_id,
        training_run=run,
        state=LedgerState.RESERVED,
        non_private=plan.rdp is None,
        planned_epsilon=plan.epsilon,
        planned_rdp=ledger.curve_to_json(plan.rdp),
        delta=run.target_delta,
    )
    ledger.ledger_total_recompute(total=total)
    return numbers


def _ledger_settle(*, run: TrainingRun, state: str, rdp: np.ndarray | None = None, epsilon: float | None = None) -> None:
    entry = PrivacyLedgerEntry.objects.filter(training_run=run).first()
    if entry is None:
        return
    total = ledger.ledger_total_locked(dataset_id=entry.dataset_id)
    entry.state = state
    if state == LedgerState.SPENT:
        entry.rdp_curve = ledger.curve_to_json(rdp)
        entry.epsilon = epsilon
    entry.save(update_fields=["state", "rdp_curve", "epsilon", "updated_at"])
    ledger.ledger_total_recompute(total=total)


@transaction.atomic
def privacy_budget_set(*, dataset: Dataset, epsilon_cap: float, delta: float, actor: Any) -> PrivacyBudget:
    """Set a dataset's ε cap at δ (DPO only); the previous value is kept in the audit event."""
    if not has_role(actor, DPO):
        raise PermissionDenied("Only a DPO may set a privacy budget.")
    _check_number(epsilon_cap, "epsilon_cap", low=0.0, low_inclusive=False)
    _check_number(delta, "delta", low=0.0, high=1.0, low_inclusive=False)
    budget = PrivacyBudget.objects.select_for_update().filter(dataset=dataset).first()
    previous = {"epsilon_cap": budget.epsilon_cap, "delta": budget.delta} if budget else None
    if budget is None:
        budget = PrivacyBudget(dataset=dataset)
    budget.epsilon_cap = float(epsilon_cap)
    budget.delta = float(delta)
    budget.set_by = actor if getattr(actor, "pk", None) else None
    budget.set_at = timezone.now()
    budget.save()
    audit_event_record(
        actor=actor,
        action="privacy_budget.set",
        object_type="dataset",
        object_id=dataset.pk,
        details={"epsilon_cap": budget.epsilon_cap, "delta": budget.delta, "previous": previous},
    )
    return budget


def _ledger_settle_reported(*, run: TrainingRun, rdp: np.ndarray | None, epsilon: float | None) -> dict:
    """Settle an external run's entry with the curve of the history it reported: spent =
    that curve, the rest of its reservation released. Refused (409, with the figures) when
    the dataset's other runs (spent and in progress) plus this curve exceed the cap, which
    an overspend a DPO approved can do. Call inside the report's transaction."""
    entry = PrivacyLedgerEntry.objects.filter(training_run=run).first()
    if entry is None:
        return {}
    total = ledger.ledger_total_locked(dataset_id=entry.dataset_id)
    budget = PrivacyBudget.objects.filter(dataset_id=entry.dataset_id).first()
    numbers: dict = {}
    if budget is not None:
        others = list(
            PrivacyLedgerEntry.objects.filter(dataset_id=entry.dataset_id)
            .exclude(state=LedgerState.RELEASED).exclude(pk=entry.pk)
            .values_list("state", "non_private", "planned_rdp", "rdp_curve")
        )
        curves = [
            ledger.curve_from_json(spent if state == LedgerState.SPENT else planned)
            for state, non_private, planned, spent in others
            if not non_private and (spent if state == LedgerState.SPENT else planned) is not None
        ]
        unbounded = rdp is None or any(non_private for _, non_private, _, _ in others)
        others_eps = math.inf if any(n for _, n, _, _ in others) else ledger.epsilon_of_curve(
            ledger.sum_curves(curves), delta=budget.delta)
        after = math.inf if unbounded else ledger.epsilon_of_curve(
            ledger.sum_curves([*curves, rdp]), delta=budget.delta)
        numbers = {
            "epsilon_cap": budget.epsilon_cap, "budget_delta": budget.delta,
            "other_runs_epsilon": _json_number(others_eps), "epsilon_after": _json_number(after),
        }
        if after > budget.epsilon_cap:
            raise ServiceConflict(
                f"Over the privacy budget of dataset {entry.dataset_id}: with this report ε would reach "
                f"{after:.4g} at δ={budget.delta:g}, the cap is {budget.epsilon_cap:g} (the dataset's other runs, "
                f"spent and in progress: {others_eps:.4g}).",
                **numbers,
            )
    entry.state = LedgerState.SPENT
    entry.rdp_curve = ledger.curve_to_json(rdp)
    entry.epsilon = epsilon
    entry.save(update_fields=["state", "rdp_curve", "epsilon", "updated_at"])
    ledger.ledger_total_recompute(total=total)
    return numbers
