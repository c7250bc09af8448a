"""The per-dataset privacy-budget ledger: storing RDP curves and composing them.

RDP curves over the engine's fixed grid of orders add up under sequential composition,
so a dataset's spent budget is the element-wise sum of its runs' curves, converted once
to (ε, δ). Orders where a curve is infinite are stored as JSON ``null`` (JSON has no
infinity) and read back as ``inf``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mlops.models import LedgerState, PrivacyLedgerEntry, PrivacyLedgerTotal


def curve_to_json(curve: Sequence[float] | np.ndarray | None) -> list | None:
    if curve is None:
        return None
    return [None if not math.isfinite(float(v)) else float(v) for v in curve]


def curve_from_json(curve: Sequence | None) -> np.ndarray | None:
    if curve is None:
        return None
    return np.array([math.inf if v is None else float(v) for v in curve], dtype=np.float64)


def epsilon_of_curve(curve: Sequence | np.ndarray | None, *, delta: float) -> float:
    """ε at δ of a stored curve (0 for no curve: nothing spent)."""
    from mlops.engine.accounting import epsilon_from_rdp

    array = curve if isinstance(curve, np.ndarray) else curve_from_json(curve)
    if array is None:
        return 0.0
    return epsilon_from_rdp(rdp=array, delta=delta)


def sum_curves(curves: list[np.ndarray]) -> np.ndarray | None:
    if not curves:
        return None
    return np.sum(np.vstack(curves), axis=0)


def ledger_total_locked(*, dataset_id: int) -> PrivacyLedgerTotal:
    """The dataset's total row, locked until the end of the caller's transaction."""
    PrivacyLedgerTotal.objects.get_or_create(dataset_id=dataset_id)
    return PrivacyLedgerTotal.objects.select_for_update().get(dataset_id=dataset_id)


def ledger_total_recompute(*, total: PrivacyLedgerTotal) -> PrivacyLedgerTotal:
    """Recompose the total from the entries (called under the total's lock, on every change)."""
    spent: list[np.ndarray] = []
    reserved: list[np.ndarray] = []
    spent_runs = reserved_runs = non_private = 0
    rows = (
        PrivacyLedgerEntry.objects.filter(dataset_id=total.dataset_id)
        .exclude(state=LedgerState.RELEASED)
        .values_list("state", "non_private", "planned_rdp", "rdp_curve")
    )
    for state, is_non_private, planned_rdp, rdp_curve in rows:
        if is_non_private:
            non_private += 1
        if state == LedgerState.SPENT:
            spent_runs += 1
            if not is_non_private and rdp_curve is not None:
                spent.append(curve_from_json(rdp_curve))
        else:
            reserved_runs += 1
            if not is_non_private and planned_rdp is not None:
                reserved.append(curve_from_json(planned_rdp))
    total.spent_rdp = curve_to_json(sum_curves(spent))
    total.reserved_rdp = curve_to_json(sum_curves(reserved))
    total.spent_runs = spent_runs
    total.reserved_runs = reserved_runs
    total.non_private_runs = non_private
    total.save()
    return total
