"""Services that write governance records. Keyword-only, atomic, audited."""

from __future__ import annotations

import functools
import hashlib
import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction
from django.utils import timezone

from governance import audit
from governance.models import ApiKey, AuditChainHead, AuditEvent
from governance.moments import EARLIEST_RECORDED, moment_parse, reason_as_sentence
from governance.roles import ALL_ROLES


class ServiceError(Exception):
    """A request the service refuses: answered as 400 naming ``field`` when given."""

    def __init__(self, message: str, *, field: str | None = None, **extra: Any):
        super().__init__(message)
        self.field = field
        self.extra = extra


class ServiceConflict(ServiceError):
    """A request refused because of the current state of a record: answered as 409."""


def moment_for_field(value: Any, *, field: str, require_timezone: bool = True, recorded: bool = True) -> datetime:
    """A client's date-time in UTC (see governance.moments), or a 400 naming ``field``.

    ``recorded``: the moment goes into a governance record, so it may not precede 1970."""
    try:
        return moment_parse(value, require_timezone=require_timezone, earliest=EARLIEST_RECORDED if recorded else None)
    except ValueError as exc:
        raise ServiceError(reason_as_sentence(exc), field=field) from None


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
    # No savepoint: the event belongs to the caller's transaction, and thousands of
    # savepoints in one transaction overflow PostgreSQL's subtransaction cache.
    with transaction.atomic(savepoint=False):
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

    # Sorted: concurrent callers then insert shared keys in the same order, so they queue on
    # the unique index instead of deadlocking.
    unique = sorted(set(pseudonyms))
    mapping: dict[str, int] = {}
    with transaction.atomic():
        for start in range(0, len(unique), chunk_size):
            chunk = unique[start : start + chunk_size]
            DataSubject.objects.bulk_create(
                [DataSubject(pseudonym=p) for p in chunk], ignore_conflicts=True, batch_size=chunk_size
            )
            mapping.update(DataSubject.objects.filter(pseudonym__in=chunk).values_list("pseudonym", "id"))
    return mapping


# --- Purposes and categories ---------------------------------------------------------


def _model_snapshot(instance, fields: list[str]) -> dict[str, Any]:
    """JSON-safe values of ``fields`` for an audit before/after record."""
    out: dict[str, Any] = {}
    for name in fields:
        value = getattr(instance, name)
        if isinstance(value, timedelta):
            value = value.total_seconds()
        elif isinstance(value, datetime):
            value = value.isoformat()
        out[name] = value
    return out


@transaction.atomic
def purpose_create(*, code: str, name: str, description: str = "", actor: Any = None):
    """Create a purpose; its parent is the purpose named by the code minus its last segment."""
    from django.core.exceptions import ValidationError

    from governance.models import PURPOSE_CODE_VALIDATOR, Purpose

    code = (code or "").strip()
    try:
        PURPOSE_CODE_VALIDATOR(code)
    except ValidationError as exc:
        raise ServiceError(exc.messages[0], field="code") from exc
    if not (name or "").strip():
        raise ServiceError("A purpose needs a name (Art. 5(1)(b): specified and explicit).", field="name")
    if Purpose.objects.filter(code=code).exists():
        raise ServiceError(f"A purpose with code {code!r} already exists.", field="code")
    parent = None
    if "." in code:
        parent_code = code.rpartition(".")[0]
        parent = Purpose.objects.filter(code=parent_code).first()
        if parent is None:
            raise ServiceError(
                f"The parent purpose {parent_code!r} does not exist; create it first.", field="code"
            )
    purpose = Purpose.objects.create(code=code, name=name.strip(), description=description, parent=parent)
    audit_event_record(
        actor=actor, action="purpose.created", object_type="purpose", object_id=purpose.pk,
        details={"code": code, "name": purpose.name, "parent": parent.code if parent else None},
    )
    return purpose


COMPATIBILITY_FACTORS = {
    "link_between_purposes": "Art. 6(4)(a)",
    "context_of_collection": "Art. 6(4)(b)",
    "nature_of_data": "Art. 6(4)(c)",
    "possible_consequences": "Art. 6(4)(d)",
    "safeguards": "Art. 6(4)(e)",
}


def purpose_compatibility_check(*, original_purpose, compatible_purpose, approved_by, texts: dict[str, str]) -> None:
    """Refuse an Art. 6(4) assessment that is incomplete, unneeded, duplicated or not approved by a DPO."""
    from governance.models import PurposeCompatibility
    from governance.roles import DPO, has_role

    if not has_role(approved_by, DPO):
        raise ServiceError("Only a data protection officer may approve a compatibility assessment.", field="approved_by")
    if original_purpose.pk == compatible_purpose.pk:
        raise ServiceError("A purpose is trivially compatible with itself.", field="compatible_purpose")
    if original_purpose.covers(compatible_purpose.code):
        raise ServiceError(
            f"{compatible_purpose.code!r} is already covered by {original_purpose.code!r}: no assessment needed.",
            field="compatible_purpose",
        )
    for field, text in texts.items():
        if not (text or "").strip():
            raise ServiceError(
                f"{COMPATIBILITY_FACTORS[field]} requires this factor to be assessed; it is empty.", field=field
            )
    if PurposeCompatibility.objects.filter(
        original_purpose=original_purpose, compatible_purpose=compatible_purpose
    ).exists():
        raise ServiceConflict(
            f"A compatibility assessment {original_purpose.code} → {compatible_purpose.code} already exists."
        )


@transaction.atomic
def purpose_compatibility_declare(
    *,
    original_purpose,
    compatible_purpose,
    link_between_purposes: str,
    context_of_collection: str,
    nature_of_data: str,
    possible_consequences: str,
    safeguards: str,
    approved_by,
    actor: Any = None,
):
    """Record that further processing for ``compatible_purpose`` is compatible (Art. 6(4)).

    Only a DPO may approve, and every one of the five Art. 6(4) factors must be assessed.
    """
    from governance.models import PurposeCompatibility

    texts = {
        "link_between_purposes": link_between_purposes,
        "context_of_collection": context_of_collection,
        "nature_of_data": nature_of_data,
        "possible_consequences": possible_consequences,
        "safeguards": safeguards,
    }
    purpose_compatibility_check(
        original_purpose=original_purpose, compatible_purpose=compatible_purpose, approved_by=approved_by, texts=texts
    )
    record = PurposeCompatibility.objects.create(
        original_purpose=original_purpose,
        compatible_purpose=compatible_purpose,
        approved_by=approved_by,
        approved_at=timezone.now(),
        **{k: v.strip() for k, v in texts.items()},
    )
    audit_event_record(
        actor=actor or approved_by, action="purpose_compatibility.declared", object_type="purpose_compatibility",
        object_id=record.pk,
        details={"original": original_purpose.code, "compatible": compatible_purpose.code,
                 "approved_by": approved_by.get_username()},
    )
    return record


@transaction.atomic
def data_category_create(
    *, code: str, name: str, description: str = "", special_category: str = "",
    criminal_offence_data: bool = False, actor: Any = None,
):
    from governance.models import DataCategory, SpecialCategory

    if special_category and special_category not in SpecialCategory.values:
        raise ServiceError(
            f"{special_category!r} is not an Art. 9(1) category; choose one of {', '.join(SpecialCategory.values)}.",
            field="special_category",
        )
    if DataCategory.objects.filter(code=code).exists():
        raise ServiceError(f"A data category with code {code!r} already exists.", field="code")
    category = DataCategory.objects.create(
        code=code, name=name, description=description, special_category=special_category,
        criminal_offence_data=criminal_offence_data,
    )
    audit_event_record(
        actor=actor, action="data_category.created", object_type="data_category", object_id=category.pk,
        details={"code": code, "special_category": special_category, "criminal_offence_data": criminal_offence_data},
    )
    return category


@transaction.atomic
def data_subject_category_create(
    *, code: str, name: str, description: str = "", vulnerable: bool = False, actor: Any = None
):
    from governance.models import DataSubjectCategory

    if DataSubjectCategory.objects.filter(code=code).exists():
        raise ServiceError(f"A data-subject category with code {code!r} already exists.", field="code")
    category = DataSubjectCategory.objects.create(code=code, name=name, description=description, vulnerable=vulnerable)
    audit_event_record(
        actor=actor, action="data_subject_category.created", object_type="data_subject_category",
        object_id=category.pk, details={"code": code, "vulnerable": vulnerable},
    )
    return category


def _category_update(*, category, changed: list[str], entity: str, actor: Any):
    category.save()
    audit_event_record(
        actor=actor, action=f"{entity}.updated", object_type=entity, object_id=category.pk,
        details={"code": category.code, "changed": changed},
    )
    return category


@transaction.atomic
def data_category_update(*, category, changed: list[str], actor: Any = None):
    """Save a data category the DPO edited (its code stays), recording which fields changed."""
    return _category_update(category=category, changed=changed, entity="data_category", actor=actor)


@transaction.atomic
def data_subject_category_update(*, category, changed: list[str], actor: Any = None):
    """Save a data-subject category the DPO edited (its code stays), recording which fields changed."""
    return _category_update(category=category, changed=changed, entity="data_subject_category", actor=actor)


# --- Processing activities (Art. 30(1)) ------------------------------------------------

PROCESSING_ACTIVITY_FIELDS = [
    "name", "description", "controller_name", "controller_contact", "joint_controller", "representative",
    "dpo_contact", "recipients", "third_country_transfers", "security_measures", "lawful_basis",
    "special_category_condition", "legitimate_interests_assessment", "controller_is_public_authority",
    "erasure_on_consent_withdrawal",
]
REQUIRED_ACTIVITY_FIELDS = {
    "name": "Art. 30(1): a record needs a name",
    "controller_name": "Art. 30(1)(a) requires the controller's name",
    "controller_contact": "Art. 30(1)(a) requires the controller's contact details",
    "dpo_contact": "Art. 30(1)(a) requires the data protection officer's contact details",
    "security_measures": "Art. 30(1)(g): describe the Art. 32(1) technical and organisational security measures",
}


def processing_activity_validate(
    *, values: dict[str, Any], purposes: list, data_subject_categories: list, retention: dict
) -> None:
    """Refuse an Art. 30 record whose lawful basis, conditions and categories do not fit together.

    ``retention`` maps DataCategory -> timedelta. Raises ServiceError naming the field and citing
    the article.
    """
    from governance.models import LawfulBasis, SpecialCategoryCondition

    for field, reason in REQUIRED_ACTIVITY_FIELDS.items():
        if not str(values.get(field) or "").strip():
            raise ServiceError(f"{reason}.", field=field)
    basis = values.get("lawful_basis")
    if basis not in LawfulBasis.values:
        raise ServiceError(
            f"Art. 6(1): the lawful basis must be one of {', '.join(LawfulBasis.values)}.", field="lawful_basis"
        )
    condition = values.get("special_category_condition") or ""
    if condition and condition not in SpecialCategoryCondition.values:
        raise ServiceError(
            f"Art. 9(2): the condition must be one of {', '.join(SpecialCategoryCondition.values)}.",
            field="special_category_condition",
        )
    if not purposes:
        raise ServiceError("Art. 30(1)(b) requires the purposes of the processing.", field="purposes")
    if not data_subject_categories:
        raise ServiceError(
            "Art. 30(1)(c) requires the categories of data subjects.", field="data_subject_categories"
        )
    if not retention:
        raise ServiceError(
            "Art. 30(1)(c) and (f) require the categories of personal data, each with a retention period.",
            field="retention",
        )
    for category, period in retention.items():
        if not isinstance(period, timedelta) or period <= timedelta(0):
            raise ServiceError(
                f"Art. 30(1)(f): the retention period for {category.code!r} must be a positive duration.",
                field="retention",
            )
    special = sorted(c.code for c in retention if c.special_category)
    if special and not condition:
        raise ServiceError(
            f"Art. 9(1) prohibits processing special categories ({', '.join(special)}) unless an Art. 9(2) "
            "condition applies; choose one.",
            field="special_category_condition",
        )
    if basis == LawfulBasis.LEGITIMATE_INTERESTS:
        if values.get("controller_is_public_authority"):
            raise ServiceError(
                "Art. 6(1) second subparagraph: legitimate interests (6(1)(f)) do not apply to processing by "
                "public authorities in the performance of their tasks.",
                field="lawful_basis",
            )
        if not str(values.get("legitimate_interests_assessment") or "").strip():
            raise ServiceError(
                "Art. 6(1)(f): a legitimate-interests assessment (the interest, necessity and the balancing "
                "against the data subjects' rights) is required.",
                field="legitimate_interests_assessment",
            )
    if condition == SpecialCategoryCondition.EXPLICIT_CONSENT and basis != LawfulBasis.CONSENT:
        # 9(2)(a) is explicit consent; relying on it while the Art. 6 basis is not consent is
        # a contradiction a DPO must resolve (EDPB Guidelines 05/2020 on consent, para. 91).
        raise ServiceError(
            "Art. 9(2)(a) explicit consent requires consent to be collected; the Art. 6(1) basis must be "
            "6(1)(a) consent as well.",
            field="special_category_condition",
        )
    for key, required in (("recipients", ("name",)), ("third_country_transfers", ("country", "safeguard"))):
        items = values.get(key) or []
        if not isinstance(items, list):
            raise ServiceError("Must be a list of objects.", field=key)
        for index, item in enumerate(items):
            for part in required:
                if not isinstance(item, dict) or not str(item.get(part) or "").strip():
                    article = "Art. 30(1)(d)" if key == "recipients" else "Art. 30(1)(e) and Art. 46"
                    raise ServiceError(f"{article}: every entry needs {part!r}.", field=f"{key}[{index}].{part}")


def _activity_state(activity) -> dict[str, Any]:
    state = _model_snapshot(activity, PROCESSING_ACTIVITY_FIELDS)
    state["purposes"] = sorted(activity.purposes.values_list("code", flat=True))
    state["data_subject_categories"] = sorted(activity.data_subject_categories.values_list("code", flat=True))
    state["retention"] = {
        code: period.total_seconds()
        for code, period in activity.retention_rules.values_list("data_category__code", "retention")
    }
    return state


def _activity_write_relations(activity, *, purposes, data_subject_categories, retention) -> None:
    from governance.models import ProcessingActivityDataCategory

    if purposes is not None:
        activity.purposes.set(purposes)
    if data_subject_categories is not None:
        activity.data_subject_categories.set(data_subject_categories)
    if retention is not None:
        activity.retention_rules.all().delete()
        ProcessingActivityDataCategory.objects.bulk_create(
            [
                ProcessingActivityDataCategory(processing_activity=activity, data_category=c, retention=p)
                for c, p in retention.items()
            ]
        )


@transaction.atomic
def processing_activity_create(
    *, actor: Any = None, purposes: list, data_subject_categories: list, retention: dict, **values: Any
):
    """Create one Art. 30(1) record. ``retention`` maps DataCategory -> timedelta."""
    from governance.models import ProcessingActivity

    unknown = set(values) - set(PROCESSING_ACTIVITY_FIELDS)
    if unknown:
        raise ServiceError(f"Unknown field(s): {', '.join(sorted(unknown))}.", field=sorted(unknown)[0])
    processing_activity_validate(
        values=values, purposes=purposes, data_subject_categories=data_subject_categories, retention=retention
    )
    if ProcessingActivity.objects.filter(name=values["name"]).exists():
        raise ServiceError(f"A processing activity named {values['name']!r} already exists.", field="name")
    activity = ProcessingActivity.objects.create(**values)
    _activity_write_relations(
        activity, purposes=purposes, data_subject_categories=data_subject_categories, retention=retention
    )
    audit_event_record(
        actor=actor, action="processing_activity.created", object_type="processing_activity",
        object_id=activity.pk, details={"after": _activity_state(activity)},
    )
    return activity


@transaction.atomic
def processing_activity_update(
    *, activity, actor: Any = None, purposes: list | None = None, data_subject_categories: list | None = None,
    retention: dict | None = None, **changes: Any,
):
    """Change an Art. 30 record; the before/after diff goes to the audit chain, so no earlier
    version of the record is ever lost."""
    from governance.models import ProcessingActivity

    unknown = set(changes) - set(PROCESSING_ACTIVITY_FIELDS)
    if unknown:
        raise ServiceError(f"Unknown field(s): {', '.join(sorted(unknown))}.", field=sorted(unknown)[0])
    activity = ProcessingActivity.objects.select_for_update().get(pk=activity.pk)
    before = _activity_state(activity)
    values = {f: getattr(activity, f) for f in PROCESSING_ACTIVITY_FIELDS} | changes
    current_retention = {r.data_category: r.retention for r in activity.retention_rules.select_related("data_category")}
    processing_activity_validate(
        values=values,
        purposes=purposes if purposes is not None else list(activity.purposes.all()),
        data_subject_categories=(
            data_subject_categories if data_subject_categories is not None
            else list(activity.data_subject_categories.all())
        ),
        retention=retention if retention is not None else current_retention,
    )
    if "name" in changes and ProcessingActivity.objects.filter(name=changes["name"]).exclude(pk=activity.pk).exists():
        raise ServiceError(f"A processing activity named {changes['name']!r} already exists.", field="name")
    for field, value in changes.items():
        setattr(activity, field, value)
    activity.save()
    _activity_write_relations(
        activity, purposes=purposes, data_subject_categories=data_subject_categories, retention=retention
    )
    after = _activity_state(activity)
    diff = {k: {"before": before[k], "after": after[k]} for k in after if before.get(k) != after[k]}
    if diff:
        audit_event_record(
            actor=actor, action="processing_activity.updated", object_type="processing_activity",
            object_id=activity.pk, details={"changes": diff},
        )
    return activity


# --- Consent ledger (Art. 7) -------------------------------------------------------------

MAX_CONSENT_BATCH = 10_000
CONSENT_EVIDENCE_KEYS = ("form_url", "ip", "user_agent", "source_system")
CONSENT_EVENT_KEYS = frozenset(
    {"event_id", "subject", "purpose", "action", "occurred_at", "notice_version", "notice_text", "notice_sha256",
     "method", "evidence", "expires_at"}
)
# Clocks of source systems drift; an event a little ahead of ours is not "in the future".
CONSENT_CLOCK_TOLERANCE = timedelta(minutes=2)
_MAX_REPORTED_ERRORS = 20


@functools.lru_cache(maxsize=65536)
def ip_truncate(value: str) -> str:
    """Zero the host part of an address: the last octet of IPv4, the last 80 bits of IPv6.

    Enough to show the network a consent came from, not enough to single out a device.
    Cached: a batch from one source system repeats few networks.
    """
    import ipaddress

    address = ipaddress.ip_address(value.strip())
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


@functools.lru_cache(maxsize=256)
def _notice_sha256(text: str) -> str:
    # A batch shows the same few notice versions to thousands of people.
    return hashlib.sha256(text.encode()).hexdigest()


def _parse_moment(value: Any, field: str) -> datetime:
    try:
        return moment_parse(value, earliest=EARLIEST_RECORDED)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None


def _text(event: dict, key: str, *, required: bool, max_length: int) -> str:
    value = event.get(key)
    if value is None or value == "":
        if required:
            raise ValueError(f"{key}: this field is required.")
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected a string.")
    value = value.strip()
    if required and not value:
        raise ValueError(f"{key}: this field is required.")
    if len(value) > max_length:
        raise ValueError(f"{key}: at most {max_length} characters.")
    return value


def _consent_event_clean(event: Any, purpose_ids: dict[str, int], now: datetime) -> tuple:
    """Validate one submitted event; raise ValueError("<field>: <reason>")."""
    from governance.pseudonymisation import normalise_identifier

    if not isinstance(event, dict):
        raise ValueError("(event): expected a JSON object.")
    unknown = set(event) - CONSENT_EVENT_KEYS
    if unknown:
        raise ValueError(f"{sorted(unknown)[0]}: unknown field.")
    subject = event.get("subject")
    if not isinstance(subject, str) or not subject.strip():
        raise ValueError("subject: the person's external identifier is required.")
    normalised_subject = normalise_identifier(subject)
    code = event.get("purpose")
    if not isinstance(code, str) or not code:
        raise ValueError("purpose: a purpose code is required.")
    purpose_id = purpose_ids.get(code)
    if purpose_id is None:
        raise ValueError(f"purpose: unknown purpose code {code!r}.")
    action = event.get("action")
    if action not in ("given", "withdrawn"):
        raise ValueError("action: must be 'given' or 'withdrawn'.")
    if event.get("occurred_at") in (None, ""):
        raise ValueError("occurred_at: this field is required.")
    occurred_at = _parse_moment(event["occurred_at"], "occurred_at")
    if occurred_at > now + CONSENT_CLOCK_TOLERANCE:
        raise ValueError("occurred_at: is in the future; consent is recorded after it happens.")
    expires_at = None
    if event.get("expires_at") not in (None, ""):
        expires_at = _parse_moment(event["expires_at"], "expires_at")
        if expires_at <= occurred_at:
            raise ValueError("expires_at: must be after occurred_at.")
        if action == "withdrawn":
            raise ValueError("expires_at: only a consent that is given can expire.")
    notice_version = _text(event, "notice_version", required=True, max_length=100)
    method = _text(event, "method", required=True, max_length=100)
    notice_text = event.get("notice_text")
    notice_sha256 = event.get("notice_sha256")
    if notice_text not in (None, "") and not isinstance(notice_text, str):
        raise ValueError("notice_text: expected a string.")
    if notice_sha256 not in (None, ""):
        if not isinstance(notice_sha256, str) or len(notice_sha256) != 64 or any(
            c not in "0123456789abcdef" for c in notice_sha256.lower()
        ):
            raise ValueError("notice_sha256: expected 64 hexadecimal characters (SHA-256).")
        notice_sha256 = notice_sha256.lower()
    if notice_text:
        computed = _notice_sha256(notice_text)
        if notice_sha256 and notice_sha256 != computed:
            raise ValueError("notice_sha256: does not match the SHA-256 of notice_text.")
        notice_sha256 = computed
    elif not notice_sha256:
        raise ValueError("notice_text: either notice_text or notice_sha256 is required (Art. 7(1)).")
    evidence_in = event.get("evidence") or {}
    if not isinstance(evidence_in, dict):
        raise ValueError("evidence: expected an object.")
    evidence = {}
    for key, value in evidence_in.items():
        if key not in CONSENT_EVIDENCE_KEYS:
            raise ValueError(f"evidence.{key}: unknown; allowed: {', '.join(CONSENT_EVIDENCE_KEYS)}.")
        if value in (None, ""):
            continue
        if not isinstance(value, str) or len(value) > 1000:
            raise ValueError(f"evidence.{key}: expected a string of at most 1000 characters.")
        if normalised_subject in value.casefold():
            raise ValueError(
                f"evidence.{key}: contains the person's identifier, which is never stored (Art. 4(5)); remove it."
            )
        if key == "ip":
            try:
                value = ip_truncate(value)
            except ValueError:
                raise ValueError("evidence.ip: not an IPv4 or IPv6 address.") from None
        evidence[key] = value
    event_id = event.get("event_id")
    if event_id not in (None, ""):
        if not isinstance(event_id, str) or len(event_id) > 100:
            raise ValueError("event_id: expected a string of at most 100 characters.")
        if normalised_subject in event_id.casefold():
            raise ValueError("event_id: contains the person's identifier, which is never stored (Art. 4(5)).")
    else:
        event_id = None
    return (
        event_id, subject, code, purpose_id, action, occurred_at, notice_version, notice_sha256, method,
        evidence, expires_at,
    )


def consent_event_derive_id(
    *, pseudonym: str, purpose: str, action: str, occurred_at: datetime, notice_version: str, notice_sha256: str,
    method: str, expires_at: datetime | None,
) -> str:
    """A deterministic id from an event's content, so resubmitting an id-less event is harmless."""
    parts = [
        pseudonym, purpose, action, occurred_at.astimezone(UTC).isoformat(), notice_version,
        notice_sha256, method, expires_at.astimezone(UTC).isoformat() if expires_at else "",
    ]
    return "sha256:" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _consent_rows_insert_postgresql(rows: list[tuple]) -> tuple[int, list[str]]:
    """COPY the batch into a temporary table, then one INSERT … SELECT creates missing subjects
    and one more inserts events whose id is new. Returns the number of events created and the
    ids of the withdrawals among them."""
    import csv
    import io

    from django.db import connection

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for row in rows:
        writer.writerow(row)
    buffer.seek(0)
    with connection.cursor() as cur:
        cur.execute(
            """CREATE TEMP TABLE IF NOT EXISTS pl_consent_ingest (
                   event_id varchar(100), pseudonym varchar(64), purpose_id bigint, action varchar(10),
                   occurred_at timestamptz, notice_version varchar(100), notice_sha256 varchar(64),
                   method varchar(100), evidence jsonb, expires_at timestamptz
               ) ON COMMIT DELETE ROWS"""
        )
        cur.execute("TRUNCATE pl_consent_ingest")
        cur.copy_expert("COPY pl_consent_ingest FROM STDIN WITH (FORMAT csv)", buffer)
        cur.execute(
            """INSERT INTO governance_datasubject (pseudonym, reference, created_at)
               SELECT pseudonym, gen_random_uuid(), now()
               FROM (SELECT DISTINCT pseudonym FROM pl_consent_ingest) new_subjects
               ORDER BY pseudonym
               ON CONFLICT (pseudonym) DO NOTHING"""
        )
        cur.execute(
            """WITH inserted AS (
                   INSERT INTO governance_consentevent (event_id, subject_id, purpose_id, action, occurred_at,
                       recorded_at, notice_version, notice_sha256, method, evidence, expires_at)
                   SELECT t.event_id, s.id, t.purpose_id, t.action, t.occurred_at, now(), t.notice_version,
                          t.notice_sha256, t.method, t.evidence, t.expires_at
                   FROM pl_consent_ingest t JOIN governance_datasubject s ON s.pseudonym = t.pseudonym
                   ORDER BY t.event_id
                   ON CONFLICT (event_id) DO NOTHING
                   RETURNING event_id, action
               )
               SELECT count(*), array_agg(event_id) FILTER (WHERE action = 'withdrawn') FROM inserted"""
        )
        created, withdrawal_ids = cur.fetchone()
        return created, withdrawal_ids or []


def _consent_rows_insert_generic(rows: list[tuple]) -> tuple[int, list[str]]:
    from governance.models import ConsentEvent

    ids = [row[0] for row in rows]
    existing: set[str] = set()
    for start in range(0, len(ids), 5000):
        existing.update(
            ConsentEvent.objects.filter(event_id__in=ids[start : start + 5000]).values_list("event_id", flat=True)
        )
    new_rows = [row for row in rows if row[0] not in existing]
    subject_ids = data_subject_ensure_many(pseudonyms=[row[1] for row in new_rows])
    ConsentEvent.objects.bulk_create(
        [
            ConsentEvent(
                event_id=r[0], subject_id=subject_ids[r[1]], purpose_id=r[2], action=r[3], occurred_at=r[4],
                notice_version=r[5], notice_sha256=r[6], method=r[7], evidence=json.loads(r[8]), expires_at=r[9],
            )
            for r in new_rows
        ],
        batch_size=1000,
        ignore_conflicts=True,
    )
    return len(new_rows), [r[0] for r in new_rows if r[3] == "withdrawn"]


@transaction.atomic
def consent_events_ingest(*, events: Any, actor: Any = None) -> dict[str, int]:
    """Append consent events to the ledger, all or nothing.

    ``events`` is one event (a dict) or a list of up to MAX_CONSENT_BATCH. Every event is
    validated before anything is written; errors name the event's index and field
    (``events[17].purpose``). Subjects are pseudonymised on arrival. An event whose
    ``event_id`` (supplied, or derived from its content) is already in the ledger is counted
    as already present and not written again. One audit event records the whole batch.
    """
    from governance.models import ProcessingActivity, Purpose
    from governance.pseudonymisation import pseudonymise_many

    if isinstance(events, dict):
        events = [events]
    if not isinstance(events, list):
        raise ServiceError("Expected one event object or a list of event objects.", field="events")
    if not events:
        raise ServiceError("The list of events is empty.", field="events")
    if len(events) > MAX_CONSENT_BATCH:
        raise ServiceError(
            f"At most {MAX_CONSENT_BATCH} events per request; this one has {len(events)}. Split the batch.",
            field="events",
        )
    codes = {e.get("purpose") for e in events if isinstance(e, dict) and isinstance(e.get("purpose"), str)}
    purpose_ids = dict(Purpose.objects.filter(code__in=codes).values_list("code", "id"))
    now = timezone.now()
    cleaned: list[tuple] = []
    errors: dict[str, list[str]] = {}
    for index, event in enumerate(events):
        try:
            cleaned.append(_consent_event_clean(event, purpose_ids, now))
        except ValueError as exc:
            field, _, reason = str(exc).partition(": ")
            key = f"events[{index}]" if field == "(event)" else f"events[{index}].{field}"
            errors[key] = [reason or str(exc)]
            if len(errors) >= _MAX_REPORTED_ERRORS:
                break
    if errors:
        first_key = next(iter(errors))
        extra = {k: v for k, v in errors.items() if k != first_key}
        raise ServiceError(errors[first_key][0], field=first_key, **extra)

    pseudonyms = pseudonymise_many([c[1] for c in cleaned])
    rows: dict[str, tuple] = {}
    given = withdrawn = 0
    withdrawn_codes: dict[str, int] = {}
    for c, pseudonym in zip(cleaned, pseudonyms, strict=True):
        event_id, _, code, purpose_id, action, occurred_at, version, sha, method, evidence, expires_at = c
        if event_id is None:
            event_id = consent_event_derive_id(
                pseudonym=pseudonym, purpose=code, action=action, occurred_at=occurred_at, notice_version=version,
                notice_sha256=sha, method=method, expires_at=expires_at,
            )
        if event_id in rows:
            continue  # the same event twice in one batch: written once, the repeat is "already present"
        rows[event_id] = (
            event_id, pseudonym, purpose_id, action, occurred_at, version, sha, method,
            json.dumps(evidence, sort_keys=True), expires_at,
        )
        if action == "given":
            given += 1
        else:
            withdrawn += 1
            withdrawn_codes[code] = withdrawn_codes.get(code, 0) + 1

    from django.db import connection

    row_list = list(rows.values())
    if connection.vendor == "postgresql":
        created, new_withdrawal_ids = _consent_rows_insert_postgresql(row_list)
    else:
        created, new_withdrawal_ids = _consent_rows_insert_generic(row_list)
    already_present = len(events) - created

    # Art. 17(1)(b): withdrawals under an activity that erases on withdrawal open erasure
    # requests through the erasure service (nothing is erased here). Only withdrawals new to
    # the ledger count, so resubmitting a batch never reopens a request already completed.
    erasure_activities: list[str] = []
    flagged = 0
    if withdrawn_codes:
        for activity_name, purpose_code in ProcessingActivity.objects.filter(
            erasure_on_consent_withdrawal=True
        ).values_list("name", "purposes__code"):
            if purpose_code is None:
                continue
            related = [c for c in withdrawn_codes if c == purpose_code or c.startswith(purpose_code + ".")
                       or purpose_code.startswith(c + ".")]
            if related:
                erasure_activities.append(activity_name)
                flagged += sum(withdrawn_codes[c] for c in related)
    if erasure_activities and new_withdrawal_ids:
        # Requests are opened after the commit by the rights app's receiver: a batch of
        # withdrawals never fails (or waits) because opening a request raced another batch.
        from governance.signals import consent_withdrawn, send_on_commit

        send_on_commit(consent_withdrawn, consent_event_ids=list(new_withdrawal_ids), actor=actor)
    subject_ref = None
    distinct_pseudonyms = {r[1] for r in row_list}
    if len(distinct_pseudonyms) == 1:
        from governance.models import DataSubject

        subject_ref = DataSubject.objects.filter(pseudonym=next(iter(distinct_pseudonyms))).values_list(
            "reference", flat=True
        ).first()
    audit_event_record(
        actor=actor, action="consent_event.ingested", object_type="consent_event_batch", object_id="",
        subject_ref=subject_ref,
        details={
            "submitted": len(events), "created": created, "already_present": already_present,
            "given": given, "withdrawn": withdrawn,
            "purposes": sorted({c[2] for c in cleaned}),
            "withdrawals_under_erasure_on_withdrawal": flagged,
            "erasure_activities": sorted(set(erasure_activities)),
        },
    )
    result = {"created": created, "already_present": already_present}
    if flagged:
        result["withdrawals_under_erasure_on_withdrawal"] = flagged
    return result


# --- Erasure of a person (called by the rights app's erasure workflow) ----------------


@transaction.atomic
def consent_events_erase(*, subject_id: int) -> int:
    """Delete a person's consent history for an Art. 17 erasure; returns how many events.

    The ledger is append-only for everything else; the audit chain keeps the erasure."""
    from governance.models import ConsentEvent

    return ConsentEvent.objects.filter(subject_id=subject_id)._erasure_delete()


@transaction.atomic
def data_subject_erase(*, subject_id: int) -> dict[str, int]:
    """Delete the person's subject row once their data are gone; returns rows deleted per model.

    The ORM delete follows the foreign keys: SISA placements go with the row, a request's
    link to it is cleared, and any row still protecting the subject (a record, a snapshot
    membership, a consent event) stops the delete here.
    """
    from governance.models import DataSubject

    _, by_model = DataSubject.objects.filter(pk=subject_id).delete()
    return by_model
