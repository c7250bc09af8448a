"""Selectors that read governance records."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import islice

from django.db import connection
from django.utils import timezone

from governance import audit
from governance.models import ApiKey, AuditChainHead, AuditEvent, Purpose


def api_key_authenticate(*, raw_key: str) -> tuple[ApiKey | None, str]:
    """Return (key, "") for a valid key, or (None, reason)."""
    key_hash = hashlib.sha256(raw_key.encode()).hexdigest()
    api_key = ApiKey.objects.select_related("user").filter(key_hash=key_hash).first()
    if api_key is None:
        return None, "Invalid API key."
    if api_key.revoked_at is not None:
        return None, "This API key has been revoked."
    if api_key.expires_at is not None and api_key.expires_at <= timezone.now():
        return None, "This API key has expired."
    if not api_key.user.is_active:
        return None, "The user of this API key is inactive."
    from governance.services import api_key_mark_used

    api_key_mark_used(api_key=api_key)
    return api_key, ""


@dataclass(frozen=True)
class ChainVerification:
    checked: int
    ok: bool
    broken_position: int | None = None
    reason: str = ""
    head_hash: str = audit.GENESIS_HASH


def audit_chain_verify(*, chunk_size: int = 5000) -> ChainVerification:
    """Recompute the hash chain from the first event and compare it with every stored row.

    Detects rows updated, deleted, inserted or reordered behind the service's back: the
    first position whose stored hash, predecessor or numbering disagrees is reported.
    """
    prev_hash = audit.GENESIS_HASH
    expected_position = 1
    checked = 0
    rows = AuditEvent.objects.order_by("position").values_list(
        "position", "prev_hash", "hash", "occurred_at", "actor", "action", "object_type", "object_id",
        "subject_ref", "details",
    )
    for position, stored_prev, stored_hash, occurred_at, actor, action, object_type, object_id, subject_ref, details in rows.iterator(chunk_size=chunk_size):
        if position != expected_position:
            return ChainVerification(
                checked, False, expected_position,
                f"expected event #{expected_position}, found #{position}: an event is missing or was inserted.",
            )
        if stored_prev != prev_hash:
            return ChainVerification(
                checked, False, position, "the link to the previous event does not match: events were removed, inserted or reordered."
            )
        fields = audit.event_fields(
            position=position, occurred_at=occurred_at, actor=actor, action=action, object_type=object_type,
            object_id=object_id, subject_ref=subject_ref, details=details,
        )
        if audit.chain_hash(prev_hash, fields) != stored_hash:
            return ChainVerification(checked, False, position, "the event's content does not match its hash: it was altered.")
        prev_hash = stored_hash
        expected_position += 1
        checked += 1
    head = AuditChainHead.objects.filter(pk=1).first()
    if head is not None and (head.position != checked or head.hash != prev_hash):
        return ChainVerification(
            checked, False, checked + 1 if head.position > checked else head.position,
            f"the chain head records {head.position} events but {checked} verify: events at the end were removed or added.",
        )
    return ChainVerification(checked, True, head_hash=prev_hash)


# --- Consent state (set-based) ------------------------------------------------------

CONSENT_STATES = ("valid", "withdrawn", "expired")  # a subject with no event at all: "no_consent"


AUDIT_VERIFICATION_ACTIONS = ("audit.verified", "audit.verification_failed")


def audit_chain_last_verification() -> AuditEvent | None:
    """The last recorded verification of the audit chain (beat's or a DPO's), or None."""
    return (
        AuditEvent.objects.filter(object_type="audit_chain", action__in=AUDIT_VERIFICATION_ACTIONS)
        .order_by("-position").first()
    )


def purpose_and_ancestor_ids(*, purpose: Purpose) -> list[int]:
    return list(Purpose.objects.filter(code__in=purpose.ancestor_codes()).values_list("id", flat=True))


# The rule's outcome for the latest event per subject; one %s parameter: the moment ``at``.
_CONSENT_STATE_COLUMNS = """SELECT subject_id,
               CASE WHEN action = 'withdrawn' THEN 'withdrawn'
                    WHEN expires_at IS NOT NULL AND expires_at <= %s THEN 'expired'
                    ELSE 'valid' END AS state"""


def consent_state_sql(*, purpose: Purpose, at: datetime, known_at: datetime | None = None) -> tuple[str, list]:
    """SQL yielding (subject_id, state) for every subject with a consent event bearing on
    ``purpose`` at time ``at``; subjects absent from the result have no consent.

    Rule (documented in docs/governance.md): among events for the purpose or any
    ancestor purpose that occurred at or before ``at``, the latest decides (ties broken
    by recording order). ``given`` is valid unless it expired by ``at``; ``withdrawn``
    is withdrawn. Later events never change the answer for an earlier ``at`` (Art. 7(3)).
    ``known_at``: the ledger as it stood then, i.e. only events recorded at or before it
    (a snapshot passes the moment it read the ledger; see governance.consent_clock);
    None: every event recorded so far. Use it as a subquery or CTE in set-based statements.
    """
    ids = purpose_and_ancestor_ids(purpose=purpose)
    if not ids:
        return "SELECT NULL AS subject_id, NULL AS state WHERE 1 = 0", []
    in_params = ", ".join(["%s"] * len(ids))
    known_sql, known_params = ("AND recorded_at <= %s", [known_at]) if known_at is not None else ("", [])
    if connection.vendor == "postgresql":
        # DISTINCT ON keeps the first row per subject from one sort, without numbering
        # every row as the window function does: same answer, less work on large ledgers.
        sql = f"""
            {_CONSENT_STATE_COLUMNS}
            FROM (
                SELECT DISTINCT ON (subject_id) subject_id, action, expires_at
                FROM governance_consentevent
                WHERE purpose_id IN ({in_params}) AND occurred_at <= %s {known_sql}
                ORDER BY subject_id, occurred_at DESC, id DESC
            ) latest
        """
        return sql, [at, *ids, at, *known_params]
    sql = f"""
        {_CONSENT_STATE_COLUMNS}
        FROM (
            SELECT subject_id, action, expires_at,
                   ROW_NUMBER() OVER (PARTITION BY subject_id ORDER BY occurred_at DESC, id DESC) AS rn
            FROM governance_consentevent
            WHERE purpose_id IN ({in_params}) AND occurred_at <= %s {known_sql}
        ) latest
        WHERE rn = 1
    """
    return sql, [at, *ids, at, *known_params]


# --- Consent: one subject, many subjects, history -----------------------------------

CONSENT_REASONS = {
    "valid": "consent was given and had not expired or been withdrawn",
    "withdrawn": "consent was withdrawn (Art. 7(3))",
    "expired": "consent had expired",
    "no_consent": "no consent was recorded for this purpose or a purpose covering it",
}


def consent_valid_at(
    *, subject, purpose: Purpose, at: datetime | None = None, known_at: datetime | None = None
) -> tuple[bool, str]:
    """Was consent for ``purpose`` valid for ``subject`` at ``at`` (default: now)?

    Same rule as consent_state_sql: the latest event at or before ``at`` on the purpose or
    an ancestor decides, among those recorded by ``known_at`` when given. Returns (valid,
    state) with state one of valid, withdrawn, expired, no_consent.
    """
    from governance.models import ConsentEvent

    at = at or timezone.now()
    events = ConsentEvent.objects.filter(
        subject=subject, purpose_id__in=purpose_and_ancestor_ids(purpose=purpose), occurred_at__lte=at
    )
    if known_at is not None:
        events = events.filter(recorded_at__lte=known_at)
    latest = (
        events
        .order_by("-occurred_at", "-id")
        .values("action", "expires_at")
        .first()
    )
    if latest is None:
        return False, "no_consent"
    if latest["action"] == "withdrawn":
        return False, "withdrawn"
    if latest["expires_at"] is not None and latest["expires_at"] <= at:
        return False, "expired"
    return True, "valid"


def purpose_lawful_bases(*, purpose: Purpose) -> dict[str, list[str]]:
    """Lawful bases of the processing activities whose purposes cover ``purpose``: {basis: [activity names]}."""
    from governance.models import ProcessingActivity

    bases: dict[str, list[str]] = {}
    rows = (
        ProcessingActivity.objects.filter(purposes__code__in=purpose.ancestor_codes())
        .values_list("lawful_basis", "name")
        .distinct()
        .order_by("lawful_basis", "name")
    )
    for basis, name in rows:
        bases.setdefault(basis, []).append(name)
    return bases


@dataclass(frozen=True)
class ConsentStatus:
    purpose: str
    at: datetime
    # {basis: [activity names]} of the Art. 30 records covering the purpose.
    lawful_bases: dict
    # False when the purpose is processed only under bases other than consent: nothing to check.
    consent_required: bool
    # {state: [indices into the submitted pseudonyms]}; state in valid/withdrawn/expired/no_consent.
    indices_by_state: dict
    # The ledger as of this moment (events recorded at or before it); None: as of now.
    known_at: datetime | None = None

    def count(self, state: str) -> int:
        return len(self.indices_by_state.get(state, []))


CONSENT_STATUS_WORK_MEM_MB = 128
# Pseudonyms are loaded into the database this many at a time, so the web worker holds one
# chunk's text (about 0.8 MB) rather than a copy of the whole request.
CONSENT_STATUS_CHUNK = 10_000


def _chunks(pseudonyms: Iterable[str], size: int) -> Iterator[tuple[int, list[str]]]:
    """(position of the first, chunk) over ``pseudonyms``, read lazily."""
    iterator = iter(pseudonyms)
    start = 0
    while chunk := list(islice(iterator, size)):
        yield start, chunk
        start += len(chunk)


def _status_input_load_postgresql(cur, pseudonyms: Iterable[str]) -> None:
    import io

    cur.execute(
        "CREATE TEMP TABLE IF NOT EXISTS pl_consent_status_input (idx integer, pseudonym varchar(64)) "
        "ON COMMIT DELETE ROWS"
    )
    cur.execute("TRUNCATE pl_consent_status_input")
    for start, chunk in _chunks(pseudonyms, CONSENT_STATUS_CHUNK):
        # Pseudonyms are hex digests, so tab-separated text needs no escaping.
        buffer = io.StringIO("".join(f"{start + i}\t{p}\n" for i, p in enumerate(chunk)))
        cur.copy_expert("COPY pl_consent_status_input (idx, pseudonym) FROM STDIN", buffer)
    cur.execute("ANALYZE pl_consent_status_input")


def consent_status_bulk(
    *, purpose: Purpose, pseudonyms: Iterable[str], at: datetime | None = None, known_at: datetime | None = None
) -> ConsentStatus:
    """Consent state of many subjects (given as pseudonyms) for ``purpose`` at ``at``, set-based.

    On PostgreSQL the pseudonyms are COPied into a temporary table (CONSENT_STATUS_CHUNK at
    a time, read lazily from ``pseudonyms``) and joined with consent_state_sql in one grouped
    query; the answer lists, per state, the positions of the submitted pseudonyms, so a
    caller maps them back to its own identifiers. ``known_at``: count only events recorded
    at or before it (the ledger as a snapshot that read it then saw it); default: every
    event recorded so far.
    """
    from django.db import connection, transaction

    at = at or timezone.now()
    bases = purpose_lawful_bases(purpose=purpose)
    if bases and "consent" not in bases:
        return ConsentStatus(purpose.code, at, bases, False, {}, known_at)
    state_sql, state_params = consent_state_sql(purpose=purpose, at=at, known_at=known_at)
    with transaction.atomic(), connection.cursor() as cur:
        if connection.vendor == "postgresql":
            # The latest-event sort over a large ledger spills to disk under the default 4 MB;
            # raised for this transaction only.
            cur.execute(f"SET LOCAL work_mem = '{CONSENT_STATUS_WORK_MEM_MB}MB'")
            _status_input_load_postgresql(cur, pseudonyms)
            cur.execute(
                f"""SELECT COALESCE(cs.state, 'no_consent'), array_agg(t.idx ORDER BY t.idx)
                    FROM pl_consent_status_input t
                    LEFT JOIN governance_datasubject s ON s.pseudonym = t.pseudonym
                    LEFT JOIN ({state_sql}) cs ON cs.subject_id = s.id
                    GROUP BY 1""",
                state_params,
            )
            indices = dict(cur.fetchall())
        else:
            cur.execute("CREATE TEMP TABLE IF NOT EXISTS pl_consent_status_input (idx integer, pseudonym text)")
            cur.execute("DELETE FROM pl_consent_status_input")
            for start, chunk in _chunks(pseudonyms, CONSENT_STATUS_CHUNK):
                cur.executemany(
                    "INSERT INTO pl_consent_status_input (idx, pseudonym) VALUES (%s, %s)",
                    [(start + i, p) for i, p in enumerate(chunk)],
                )
            cur.execute(
                f"""SELECT COALESCE(cs.state, 'no_consent'), t.idx
                    FROM pl_consent_status_input t
                    LEFT JOIN governance_datasubject s ON s.pseudonym = t.pseudonym
                    LEFT JOIN ({state_sql}) cs ON cs.subject_id = s.id
                    ORDER BY t.idx""",
                state_params,
            )
            indices = {}
            for state, idx in cur.fetchall():
                indices.setdefault(state, []).append(idx)
            cur.execute("DELETE FROM pl_consent_status_input")
    for state in ("valid", "withdrawn", "expired", "no_consent"):
        indices.setdefault(state, [])
    return ConsentStatus(purpose.code, at, bases, True, indices, known_at)


def consent_history(*, subject, at: datetime | None = None) -> list[dict]:
    """Per purpose the subject has events for: the state at ``at`` (default now) and the timeline."""
    from governance.models import ConsentEvent

    at = at or timezone.now()
    events = list(ConsentEvent.objects.filter(subject=subject).select_related("purpose").order_by("occurred_at", "id"))
    by_purpose: dict[str, dict] = {}
    for event in events:
        entry = by_purpose.setdefault(event.purpose.code, {"purpose": event.purpose, "events": []})
        entry["events"].append(event)
    history = []
    for code in sorted(by_purpose):
        entry = by_purpose[code]
        valid, state = consent_valid_at(subject=subject, purpose=entry["purpose"], at=at)
        history.append({"purpose": entry["purpose"], "valid": valid, "state": state, "events": entry["events"]})
    return history


def data_subject_find(*, identifier: str):
    """The subject an external identifier belongs to, looked up by its pseudonym (or None).

    Tries the current normalisation's pseudonym first, then earlier versions' (a subject
    first recorded under version 1 from an identifier with invisible characters)."""
    from governance.models import DataSubject
    from governance.pseudonymisation import pseudonym_candidates

    candidates = pseudonym_candidates(identifier)
    found = {s.pseudonym: s for s in DataSubject.objects.filter(pseudonym__in=candidates)}
    return next((found[p] for p in candidates if p in found), None)


# --- Processing limits: restriction (Art. 18) and objection (Art. 21) ---------------
#
# Rule (documented in docs/governance.md): a person is restricted at T when a restriction
# of theirs took effect at or before T and was not lifted at or before T. A person objects
# to a purpose P at T when an objection of theirs to P or to a purpose covering P (an
# ancestor, as for consent) took effect at or before T and no compelling grounds were
# recorded for it at or before T (never for direct marketing, Art. 21(3)). Every moment is
# the server's, stamped inside the consent ledger's critical section, so the answer for a T
# at or before a ledger moment K (governance.consent_clock) never changes afterwards.

OBJECTION_BASES = ("public_task", "legitimate_interests")


def objection_applies(*, lawful_basis: str, purpose_code: str) -> bool:
    """Whether an Art. 21 objection stops processing under ``lawful_basis`` for the purpose:
    Art. 21(1) covers Art. 6(1)(e) and (f); Art. 21(2) direct marketing under any basis but
    consent (where withdrawal, Art. 7(3), is the route)."""
    from governance.models import LawfulBasis, purpose_code_is_direct_marketing

    if lawful_basis in OBJECTION_BASES:
        return True
    return purpose_code_is_direct_marketing(purpose_code) and lawful_basis != LawfulBasis.CONSENT


def restrictions_in_force(*, at: datetime | None = None):
    """Restrictions holding at ``at`` (default now), as a queryset (compose it with ``__in``)."""
    from governance.models import ProcessingRestriction

    at = at or timezone.now()
    return ProcessingRestriction.objects.filter(restricted_at__lte=at).exclude(lifting__lifted_at__lte=at)


def restricted_subject_ids(*, at: datetime | None = None):
    """Ids of the people restricted at ``at`` (default now): a lazy queryset, usable as a subquery."""
    return restrictions_in_force(at=at).values("subject_id").distinct()


def objections_in_force(*, purpose: Purpose | None = None, at: datetime | None = None):
    """Objections excluding people at ``at`` (default now): to ``purpose`` or a purpose covering
    it when given, else to any purpose; compelling grounds recorded by then lift all but
    direct-marketing ones."""
    from django.db.models import Q

    from governance.models import ProcessingObjection

    at = at or timezone.now()
    objections = ProcessingObjection.objects.filter(objected_at__lte=at)
    if purpose is not None:
        objections = objections.filter(purpose_id__in=purpose_and_ancestor_ids(purpose=purpose))
    return objections.exclude(Q(direct_marketing=False) & Q(compelling_grounds__recorded_at__lte=at))


def objecting_subject_ids(*, purpose: Purpose, at: datetime | None = None):
    """Ids of the people objecting to ``purpose`` at ``at`` (default now): a lazy queryset."""
    return objections_in_force(purpose=purpose, at=at).values("subject_id").distinct()


def restricted_subjects_sql(*, at: datetime) -> tuple[str, list]:
    """SQL yielding the subject_id of every person restricted at ``at`` (no duplicates matter
    to ``IN``); for set-based statements such as a snapshot's classification."""
    sql = (
        "SELECT pr.subject_id FROM governance_processingrestriction pr WHERE pr.restricted_at <= %s "
        "AND NOT EXISTS (SELECT 1 FROM governance_restrictionlifting rl "
        "WHERE rl.restriction_id = pr.id AND rl.lifted_at <= %s)"
    )
    return sql, [at, at]


def objecting_subjects_sql(*, purpose: Purpose, at: datetime) -> tuple[str, list]:
    """SQL yielding the subject_id of every person objecting to ``purpose`` (or a purpose
    covering it) at ``at``; same rule as objections_in_force."""
    ids = purpose_and_ancestor_ids(purpose=purpose)
    if not ids:
        return "SELECT NULL AS subject_id WHERE 1 = 0", []
    in_params = ", ".join(["%s"] * len(ids))
    sql = (
        "SELECT po.subject_id FROM governance_processingobjection po "
        f"WHERE po.purpose_id IN ({in_params}) AND po.objected_at <= %s "
        "AND (po.direct_marketing OR NOT EXISTS (SELECT 1 FROM governance_compellinggrounds cg "
        "WHERE cg.objection_id = po.id AND cg.recorded_at <= %s))"
    )
    return sql, [*ids, at, at]
