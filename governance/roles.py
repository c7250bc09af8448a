"""The three roles, held as Django groups created by a data migration.

A view names the roles allowed per action; superusers act as DPOs.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

DPO = "dpo"
ML_ENGINEER = "ml_engineer"
AUDITOR = "auditor"
ALL_ROLES: tuple[str, ...] = (DPO, ML_ENGINEER, AUDITOR)
ROLE_DESCRIPTIONS = {
    DPO: "Data protection officer: full governance access.",
    ML_ENGINEER: "Datasets, snapshots, training and models; never consent evidence or raw identifiers.",
    AUDITOR: "Read-only access and reports.",
}


def roles_of(user: AbstractBaseUser | AnonymousUser | None) -> frozenset[str]:
    if user is None or not user.is_authenticated or not user.is_active:
        return frozenset()
    cached = getattr(user, "_privacy_ledger_roles", None)
    if cached is not None:
        return cached
    if user.is_superuser:
        roles = frozenset({DPO})
    else:
        roles = frozenset(user.groups.filter(name__in=ALL_ROLES).values_list("name", flat=True))
    user._privacy_ledger_roles = roles
    return roles


def has_role(user, *roles: str) -> bool:
    return bool(roles_of(user) & set(roles))


def sees_erasure_detail(user) -> bool:
    """The DPO and the auditor are told which erasure request changed a snapshot or a model,
    and why; ML engineers only that it changed and when (issue 14)."""
    return has_role(user, DPO, AUDITOR)


def sees_audit_records(user) -> bool:
    """The DPO and the auditor may be told which records (people) a privacy audit attacked
    as members and non-members; ML engineers see the audit's figures only, not who was in
    the training data."""
    return has_role(user, DPO, AUDITOR)
