"""Role-based permissions for every API view.

A view declares which roles may perform each action::

    role_permissions = {"list": READ_ROLES, "create": {DPO}, "default": READ_ROLES}

``default`` applies to actions not named. A view without ``role_permissions`` is closed
to everyone, so a new endpoint cannot be open by accident.
"""

from __future__ import annotations

from rest_framework import permissions

from governance.roles import ALL_ROLES, AUDITOR, DPO, ML_ENGINEER, roles_of

READ_ROLES = frozenset(ALL_ROLES)
DPO_ONLY = frozenset({DPO})
DPO_AND_ENGINEER = frozenset({DPO, ML_ENGINEER})
DPO_AND_AUDITOR = frozenset({DPO, AUDITOR})


def required_roles(view, request) -> frozenset[str]:
    mapping = getattr(view, "role_permissions", None)
    if not mapping:
        return frozenset()
    action = getattr(view, "action", None) or request.method.lower()
    if action == "metadata" and action not in mapping:
        # OPTIONS describes the route: answered to every role allowed anything on it (an
        # auditor may read a snapshot, so is told what the route offers, not a 403).
        return frozenset().union(*(frozenset(roles) for roles in mapping.values()))
    if action in mapping:
        return frozenset(mapping[action])
    if request.method in permissions.SAFE_METHODS and "read" in mapping:
        return frozenset(mapping["read"])
    if request.method not in permissions.SAFE_METHODS and "write" in mapping:
        return frozenset(mapping["write"])
    return frozenset(mapping.get("default", ()))


class RolePermission(permissions.BasePermission):
    def has_permission(self, request, view) -> bool:
        if not request.user or not request.user.is_authenticated:
            return False
        allowed = required_roles(view, request)
        mine = roles_of(request.user)
        if allowed & mine:
            return True
        action = getattr(view, "action", None) or request.method
        self.message = (
            f"Your role ({', '.join(sorted(mine)) or 'none'}) may not perform '{action}' here; "
            f"allowed: {', '.join(sorted(allowed)) or 'nobody'}."
        )
        return False
