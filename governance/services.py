"""Services that write governance records. Keyword-only, atomic, audited."""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction
from django.utils import timezone

from governance import audit
from governance.models import ApiKey, AuditChainHead, AuditEvent
from governance.roles import ALL_ROLES


class ServiceError(Exception):
    """A request the service refuses: answered as 400 naming ``field`` when given."""

    def __init__(self, message: str, *, field: str | None = None, **extra: Any):
        super().__init__(message)
        self.field = field
        self.extra = extra


class ServiceConflict(ServiceError):
    """A request refused because of the current state of a record: answered as 409."""


SYSTEM_ACTOR = "system"


def _actor_name(actor: Any) -> str:
    if actor is None:
        return SYSTEM_ACTOR
    if isinstance(actor, str):
        return actor
    return getattr(actor, "get_username", lambda: str(actor))()


def _lock_chain_head() -> AuditChainHead:
    head = AuditChainHead.objects.select_for_update().filter(pk=1).first()
    if head is None:
        try:
            with transaction.atomic():
                AuditChainHead.objects.create(pk=1)
        except IntegrityError:
            pass  # another writer created it first; lock theirs
        head = AuditChainHead.objects.select_for_update().get(pk=1)
    return head


def audit_event_record(
    *,
    actor: Any,
    action: str,
    object_type: str = "",
    object_id: Any = "",
    subject_ref: Any = None,
    details: dict | None = None,
) -> AuditEvent:
    """Append one event to the audit chain, inside the caller's transaction.

    The chain head row is locked first, so concurrent writers queue instead of forking.
    Never pass a raw identifier or a pseudonym: refer to a person by ``subject_ref``.
    """
    # Round-trip through JSON so the stored details hash the same when read back.
    details = json.loads(audit.canonical_json(details or {}))
    with transaction.atomic():
        head = _lock_chain_head()
        position = head.position + 1
        occurred_at = timezone.now()
        fields = audit.event_fields(
            position=position,
            occurred_at=occurred_at,
            actor=_actor_name(actor),
            action=action,
            object_type=object_type,
            object_id=str(object_id),
            subject_ref=subject_ref,
            details=details,
        )
        digest = audit.chain_hash(head.hash, fields)
        event = AuditEvent.objects.create(
            position=position,
            prev_hash=head.hash,
            hash=digest,
            occurred_at=occurred_at,
            actor=fields["actor"],
            action=action,
            object_type=object_type,
            object_id=str(object_id),
            subject_ref=subject_ref,
            details=details,
        )
        AuditChainHead.objects.filter(pk=1).update(position=position, hash=digest)
    return event


def audit_chain_verification_record(*, ok: bool, checked: int, broken_position: int | None, reason: str) -> AuditEvent:
    """Record the outcome of a periodic verification in the chain itself, so gaps in checking show."""
    return audit_event_record(
        actor=SYSTEM_ACTOR,
        action="audit.verified" if ok else "audit.verification_failed",
        object_type="audit_chain",
        details={"checked": checked, "broken_position": broken_position, "reason": reason},
    )


# --- Roles and API keys --------------------------------------------------------------


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


# --- Data subjects -------------------------------------------------------------------


def data_subject_ensure_many(*, pseudonyms: list[str], chunk_size: int = 20000) -> dict[str, int]:
    """Map pseudonyms to DataSubject ids, creating the missing subjects in bulk.

    Takes pseudonyms (see governance.pseudonymisation), never raw identifiers. Set-based:
    one INSERT … ON CONFLICT DO NOTHING and one SELECT per chunk.
    """
    from governance.models import DataSubject

    unique = list(dict.fromkeys(pseudonyms))
    mapping: dict[str, int] = {}
    with transaction.atomic():
        for start in range(0, len(unique), chunk_size):
            chunk = unique[start : start + chunk_size]
            DataSubject.objects.bulk_create(
                [DataSubject(pseudonym=p) for p in chunk], ignore_conflicts=True, batch_size=chunk_size
            )
            mapping.update(DataSubject.objects.filter(pseudonym__in=chunk).values_list("pseudonym", "id"))
    return mapping
