"""The consent ledger (Art. 7): validating a batch of consent events, pseudonymising
their subjects on arrival, deriving ids so a resubmitted batch is harmless, and
writing it in one set-based statement (COPY on PostgreSQL), all or nothing.

The hot ingest path, with its own caches and bulk SQL; it uses ``subjects`` to create
missing subjects and ``audit`` for its one event per batch. Neither imports it back.
"""

from __future__ import annotations

import functools
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from governance.consent_clock import consent_recorded_at_stamp
from governance.moments import EARLIEST_RECORDED, moment_parse
from governance.pseudonymisation import (
    NORMALISATION_VERSION,
    IdentifierError,
    normalise_identifier,
)
from governance.services.audit import audit_event_record
from governance.services.consent_evidence import (
    consent_evidence_clean,
    evidence_decoded,
)
from governance.services.errors import ServiceError
from governance.services.subjects import data_subject_ensure_many

MAX_CONSENT_BATCH = 10_000
CONSENT_EVENT_KEYS = frozenset(
    {"event_id", "subject", "purpose", "action", "occurred_at", "notice_version", "notice_text", "notice_sha256",
     "method", "evidence", "expires_at"}
)
# Clocks of source systems drift; an event a little ahead of ours is not "in the future".
CONSENT_CLOCK_TOLERANCE = timedelta(minutes=2)
_MAX_REPORTED_ERRORS = 20


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
    if not isinstance(event, dict):
        raise ValueError("(event): expected a JSON object.")
    unknown = set(event) - CONSENT_EVENT_KEYS
    if unknown:
        raise ValueError(f"{sorted(unknown)[0]}: unknown field.")
    subject = event.get("subject")
    if not isinstance(subject, str) or not subject.strip():
        raise ValueError("subject: the person's external identifier is required.")
    try:
        normalised_subject = normalise_identifier(subject)
    except IdentifierError:
        raise ValueError(
            "subject: has no visible character; invisible characters (zero-width, bidi controls, soft hyphens) "
            "are removed before pseudonymisation."
        ) from None
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
    evidence, url_trimmed = consent_evidence_clean(event.get("evidence"), normalised_subject=normalised_subject)
    event_id = event.get("event_id")
    if event_id not in (None, ""):
        if not isinstance(event_id, str) or len(event_id) > 100:
            raise ValueError("event_id: expected a string of at most 100 characters.")
        try:
            decoded_id = evidence_decoded(event_id)
        except ValueError as exc:
            raise ValueError(f"event_id: {exc}") from None
        if normalised_subject in decoded_id:
            raise ValueError("event_id: contains the person's identifier, which is never stored (Art. 4(5)).")
    else:
        event_id = None
    return (
        event_id, subject, code, purpose_id, action, occurred_at, notice_version, notice_sha256, method,
        evidence, expires_at, url_trimmed,
    )


def _evidence_json(evidence: dict[str, str], cache: dict[tuple, str]) -> str:
    # Cleaned evidence holds only strings, so its items make a key.
    key = tuple(evidence.items())
    text = cache.get(key)
    if text is None:
        text = cache[key] = json.dumps(evidence, sort_keys=True)
    return text


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


_CONSENT_COPY_COLUMNS = (
    "event_id, subject_id, purpose_id, action, occurred_at, recorded_at, notice_version, notice_sha256, method, "
    "evidence, expires_at"
)


def _copy_text(value: str) -> str:
    # COPY's text format gives these four characters a meaning; anything else goes through as
    # is. Four scans of a short string cost less than one regular-expression search.
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return value


def _subject_ids_postgresql(cur: Any, pseudonyms: list[str]) -> dict[str, int]:
    """The subject id of each pseudonym, creating the missing subjects: one INSERT … ON
    CONFLICT DO NOTHING RETURNING for the new ones, one indexed SELECT for the others."""
    cur.execute(
        """INSERT INTO governance_datasubject (pseudonym, reference, created_at, normalisation_version)
           SELECT p, gen_random_uuid(), now(), %s FROM unnest(%s::varchar[]) AS p
           ORDER BY p
           ON CONFLICT (pseudonym) DO NOTHING
           RETURNING pseudonym, id""",
        [NORMALISATION_VERSION, pseudonyms],
    )
    ids = dict(cur.fetchall())
    known = [p for p in pseudonyms if p not in ids]
    if known:
        # A separate statement: it sees subjects another batch committed while this INSERT
        # waited on them, which a SELECT inside the INSERT's own snapshot would miss.
        cur.execute("SELECT pseudonym, id FROM governance_datasubject WHERE pseudonym = ANY(%s::varchar[])", [known])
        ids.update(cur.fetchall())
    return ids


def _consent_rows_insert_postgresql(rows: list[tuple], recorded_at: datetime) -> tuple[int, list[str]]:
    """Create the missing subjects, then COPY the events straight into the ledger; if one of
    them is already there (a redelivered batch, or another batch racing this one), roll the
    COPY back to its savepoint and insert through a temporary table with ON CONFLICT DO
    NOTHING instead. Returns the number of events created and the ids of the withdrawals
    among them."""
    import io

    import psycopg2
    from django.db import IntegrityError, connection

    with connection.cursor() as cur:
        subject_ids = _subject_ids_postgresql(cur, sorted({row[1] for row in rows}))
    recorded = recorded_at.isoformat()
    # Sorted by event_id: concurrent batches sharing ids then meet on the unique index in the
    # same order and queue instead of deadlocking.
    rows = sorted(rows, key=lambda row: row[0])
    # A batch repeats a few notice versions, methods and evidence objects: escape each once.
    escaped: dict[str, str] = {}

    def once(value: str) -> str:
        text = escaped.get(value)
        if text is None:
            text = escaped[value] = _copy_text(value)
        return text

    null = "\\N"
    text = "".join([
        f"{_copy_text(event_id)}\t{subject_ids[pseudonym]}\t{purpose_id}\t{action}\t{occurred_at.isoformat()}\t"
        f"{recorded}\t{once(version)}\t{sha}\t{once(method)}\t{once(evidence)}\t"
        f"{null if expires_at is None else expires_at.isoformat()}\n"
        for event_id, pseudonym, purpose_id, action, occurred_at, version, sha, method, evidence, expires_at in rows
    ])
    try:
        with transaction.atomic(), connection.cursor() as cur:
            cur.copy_expert(f"COPY governance_consentevent ({_CONSENT_COPY_COLUMNS}) FROM STDIN", io.StringIO(text))
        return len(rows), [row[0] for row in rows if row[3] == "withdrawn"]
    except (IntegrityError, psycopg2.IntegrityError) as exc:
        cause = exc if isinstance(exc, psycopg2.Error) else exc.__cause__
        if getattr(cause, "pgcode", None) != "23505":  # only a unique violation means "already present"
            raise
    with connection.cursor() as cur:
        cur.execute(
            """CREATE TEMP TABLE IF NOT EXISTS pl_consent_ingest_rows (
                   event_id varchar(100), subject_id bigint, purpose_id bigint, action varchar(10),
                   occurred_at timestamptz, recorded_at timestamptz, notice_version varchar(100),
                   notice_sha256 varchar(64), method varchar(100), evidence jsonb, expires_at timestamptz
               ) ON COMMIT DELETE ROWS"""
        )
        cur.execute("TRUNCATE pl_consent_ingest_rows")
        cur.copy_expert(f"COPY pl_consent_ingest_rows ({_CONSENT_COPY_COLUMNS}) FROM STDIN", io.StringIO(text))
        cur.execute(
            f"""WITH inserted AS (
                   INSERT INTO governance_consentevent ({_CONSENT_COPY_COLUMNS})
                   SELECT {_CONSENT_COPY_COLUMNS} FROM pl_consent_ingest_rows
                   ORDER BY event_id
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
    Evidence is validated per key (consent_evidence_clean); ``evidence_urls_trimmed`` in the
    answer counts the events whose form URL was stored without its query string or fragment.
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

    # Each person once: a batch often carries several events of the same person.
    identifiers = list(dict.fromkeys(c[1] for c in cleaned))
    pseudonym_of = dict(zip(identifiers, pseudonymise_many(identifiers), strict=True))
    pseudonyms = [pseudonym_of[c[1]] for c in cleaned]
    # The same evidence (form, user agent, source system) recurs across a batch: encode it once.
    evidence_json: dict[tuple, str] = {}
    rows: dict[str, tuple] = {}
    given = withdrawn = 0
    urls_trimmed = sum(1 for c in cleaned if c[11])
    withdrawn_codes: dict[str, int] = {}
    for c, pseudonym in zip(cleaned, pseudonyms, strict=True):
        event_id, _, code, purpose_id, action, occurred_at, version, sha, method, evidence, expires_at, _ = c
        if event_id is None:
            event_id = consent_event_derive_id(
                pseudonym=pseudonym, purpose=code, action=action, occurred_at=occurred_at, notice_version=version,
                notice_sha256=sha, method=method, expires_at=expires_at,
            )
        if event_id in rows:
            continue  # the same event twice in one batch: written once, the repeat is "already present"
        rows[event_id] = (
            event_id, pseudonym, purpose_id, action, occurred_at, version, sha, method,
            _evidence_json(evidence, evidence_json), expires_at,
        )
        if action == "given":
            given += 1
        else:
            withdrawn += 1
            withdrawn_codes[code] = withdrawn_codes.get(code, 0) + 1

    from django.db import connection

    row_list = list(rows.values())
    # The recorded time is stamped inside the ledger's critical section, held to commit, so a
    # snapshot never reads at a moment after it without seeing these events (consent_clock).
    recorded_at = consent_recorded_at_stamp()
    if connection.vendor == "postgresql":
        created, new_withdrawal_ids = _consent_rows_insert_postgresql(row_list, recorded_at)
    else:
        # recorded_at is the model's auto_now_add, also read after the lock was taken.
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
            "evidence_urls_trimmed": urls_trimmed,
        },
    )
    result = {"created": created, "already_present": already_present}
    if flagged:
        result["withdrawals_under_erasure_on_withdrawal"] = flagged
    if urls_trimmed:
        result["evidence_urls_trimmed"] = urls_trimmed
    return result
