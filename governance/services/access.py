"""Who may call the API: the role groups, granting a role to a user, and the life of an
API key (created with its raw value shown once, revoked, marked used).

Kept apart from the records of processing: API authentication (``governance.selectors``)
marks keys used on every request, and the management commands create users and keys.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils import timezone

from governance.models import ApiKey
from governance.roles import ALL_ROLES
from governance.services.audit import audit_event_record
from governance.services.errors import ServiceConflict, ServiceError


def roles_ensure() -> None:
    """Create the role groups if missing (the data migration does it; a flushed test DB may not)."""
    for name in ALL_ROLES:
        Group.objects.get_or_create(name=name)


@transaction.atomic
def user_ensure_with_role(*, username: str, role: str, actor: Any = None):
    if role not in ALL_ROLES:
        raise ServiceError(f"Unknown role {role!r}; choose one of {', '.join(ALL_ROLES)}.", field="role")
    roles_ensure()
    user, created = get_user_model().objects.get_or_create(username=username)
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    group = Group.objects.get(name=role)
    if not user.groups.filter(pk=group.pk).exists():
        user.groups.add(group)
        audit_event_record(
            actor=actor, action="user.role_granted", object_type="user", object_id=user.pk, details={"role": role}
        )
    return user


def _hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


@transaction.atomic
def api_key_create(
    *, user, name: str = "", expires_at: datetime | None = None, actor: Any = None
) -> tuple[ApiKey, str]:
    """Create a key and return it with its raw value, which is never stored and never shown again."""
    if expires_at is None:
        expires_at = timezone.now() + timedelta(days=settings.API_KEY_DEFAULT_LIFETIME_DAYS)
    raw_key = "pl_" + secrets.token_urlsafe(32)
    api_key = ApiKey.objects.create(
        user=user, name=name, prefix=raw_key[:10], key_hash=_hash_key(raw_key), expires_at=expires_at
    )
    audit_event_record(
        actor=actor or user,
        action="api_key.created",
        object_type="api_key",
        object_id=api_key.pk,
        details={"user": user.get_username(), "prefix": api_key.prefix, "expires_at": expires_at.isoformat()},
    )
    return api_key, raw_key


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey, actor: Any = None) -> ApiKey:
    if api_key.revoked_at is not None:
        raise ServiceConflict("This API key is already revoked.")
    api_key.revoked_at = timezone.now()
    api_key.save(update_fields=["revoked_at"])
    audit_event_record(
        actor=actor, action="api_key.revoked", object_type="api_key", object_id=api_key.pk,
        details={"prefix": api_key.prefix},
    )
    return api_key


def api_key_mark_used(*, api_key: ApiKey) -> None:
    # At most one write a minute per key: authentication must not turn reads into writes.
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at > timedelta(minutes=1):
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
