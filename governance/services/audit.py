"""The one writer of the tamper-evident audit chain: every service of every app appends
its event through ``audit_event_record``, under the chain-head lock.

The hashing itself lives in ``governance.audit`` (imported here as ``audit``); this module
only writes rows. It depends on ``errors`` alone, so any service may import it.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from governance import audit, audit_anchor, checkpoints
from governance.models import AuditChainHead, AuditEvent
from governance.services.errors import SYSTEM_ACTOR, ServiceConflict, _actor_name

logger = logging.getLogger(__name__)


# Rows per INSERT statement of a batch: large enough that a service's batch is one statement,
# small enough that a runaway list never builds a statement of hundreds of megabytes.
MAX_INSERT_ROWS = 1000
AUDIT_EVENT_KEYS = frozenset({"actor", "action", "object_type", "object_id", "subject_ref", "details"})
_COLUMNS = ("position", "prev_hash", "hash", "occurred_at", "actor", "action", "object_type", "object_id",
            "subject_ref", "details")
_ROW_SQL = "(%s, %s, %s, %s, %s, %s, %s, %s, %s::uuid, %s::jsonb)"
# The head this connection's open transaction has locked and moved to, as (position, hash).
_HEAD_ATTR = "_audit_chain_head"
# The DB-API connection (database session) this module's statements were prepared on.
_PREPARED_ATTR = "_audit_prepared_on"


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


def _prepared_statements(cursor: Any) -> None:
    """PREPARE this module's two statements once per database session (PREPARE outlives
    transactions, rolled back or not; a new session, after a reconnect, prepares again):
    planning them on every call cost as much as running them."""
    connection = transaction.get_connection()
    raw = connection.connection
    if getattr(connection, _PREPARED_ATTR, None) is raw:
        return
    head_table, event_table = AuditChainHead._meta.db_table, AuditEvent._meta.db_table
    cursor.execute(
        f"PREPARE pl_audit_head_lock AS SELECT position, hash FROM {head_table} WHERE id = 1 FOR UPDATE"
    )
    # $1 position, $2 hash, $3 the head's position before, $4 its hash (the prev_hash), then
    # occurred_at, actor, action, object_type, object_id, subject_ref, details.
    cursor.execute(
        "PREPARE pl_audit_append (bigint, varchar, bigint, varchar, timestamptz, varchar, varchar, varchar,"
        f" varchar, uuid, jsonb) AS WITH moved AS (UPDATE {head_table} SET position = $1, hash = $2"
        " WHERE id = 1 AND position = $3 AND hash = $4 RETURNING 1)"
        f" INSERT INTO {event_table} ({', '.join(_COLUMNS)}) SELECT $1, $4, $2, $5, $6, $7, $8, $9, $10, $11"
        " WHERE EXISTS (SELECT 1 FROM moved) RETURNING id, position"
    )
    setattr(connection, _PREPARED_ATTR, raw)


def _lock_chain_head_row() -> tuple[int, str]:
    with transaction.get_connection().cursor() as cursor:
        _prepared_statements(cursor)
        cursor.execute("EXECUTE pl_audit_head_lock")
        row = cursor.fetchone()
    if row is None:
        head = _lock_chain_head()  # the first event ever: create the head row, then lock it
        return head.position, head.hash
    return row[0], row[1]


def _event_prepare(
    *,
    actor: Any,
    action: str,
    object_type: str = "",
    object_id: Any = "",
    subject_ref: Any = None,
    details: dict | None = None,
) -> dict[str, Any]:
    """An event's fields as they are hashed and stored, checked before anything is written."""
    if subject_ref:
        uuid.UUID(str(subject_ref))  # a malformed reference fails here, not in the INSERT
    # Round-trip through JSON so the stored details hash the same when read back; NaN and
    # infinities are refused here because PostgreSQL's jsonb would refuse them mid-insert.
    details_json = audit.canonical_json(details or {})
    return {
        "actor": _actor_name(actor),
        "action": action,
        "object_type": object_type,
        "object_id": str(object_id),
        "subject_ref": subject_ref,
        "details": json.loads(details_json, parse_constant=_refuse_constant),
        "details_json": details_json,
    }


def _refuse_constant(name: str) -> None:
    raise ValueError(f"audit event details cannot hold {name}: it is not JSON")


def _chain(prepared: list[dict[str, Any]], *, position: int, prev_hash: str) -> list[dict[str, Any]]:
    """Number and hash ``prepared`` after the head (position, prev_hash), exactly as
    one-by-one appends would, with one timestamp read now (after the head is held)."""
    occurred_at = timezone.now()
    rows = []
    for event in prepared:
        position += 1
        fields = audit.event_fields(
            position=position, occurred_at=occurred_at, actor=event["actor"], action=event["action"],
            object_type=event["object_type"], object_id=event["object_id"], subject_ref=event["subject_ref"],
            details=event["details"],
        )
        digest = audit.chain_hash(prev_hash, fields)
        rows.append(event | {"position": position, "prev_hash": prev_hash, "hash": digest, "occurred_at": occurred_at})
        prev_hash = digest
    return rows


def _instances(rows: list[dict[str, Any]], ids: dict[int, int]) -> list[AuditEvent]:
    # Positional values in the model's field order: Django's fast path of Model.__init__,
    # a third of the cost of keywords for a batch of thousands.
    alias = transaction.get_connection().alias
    events = []
    for row in rows:
        event = AuditEvent(
            ids[row["position"]], row["position"], row["prev_hash"], row["hash"], row["occurred_at"], row["actor"],
            row["action"], row["object_type"], row["object_id"], row["subject_ref"], row["details"],
        )
        event._state.adding = False
        event._state.db = alias
        events.append(event)
    return events


def _append(prepared: list[dict[str, Any]]) -> list[AuditEvent]:
    """Append ``prepared`` events after the chain head, inside the caller's transaction."""
    connection = transaction.get_connection()
    if connection.vendor != "postgresql":
        return _append_orm(prepared)
    cached = getattr(connection, _HEAD_ATTR, None)
    while True:
        if cached is None:
            cached = _lock_chain_head_row()
            # Forgotten at commit, so the next transaction locks the head again first; a
            # rollback leaves a stale value, which the guarded UPDATE below finds out.
            transaction.on_commit(lambda: setattr(connection, _HEAD_ATTR, None))
        rows = _chain(prepared, position=cached[0], prev_hash=cached[1])
        ids = _insert_moving_head(rows, expected=cached)
        if ids is not None:
            break
        # The head is not where this transaction left it (a savepoint rolled back, a new
        # transaction, a test's raw SQL): lock it again and hash from where it really is.
        cached = None
    setattr(connection, _HEAD_ATTR, (rows[-1]["position"], rows[-1]["hash"]))
    return _instances(rows, ids)


def _insert_moving_head(rows: list[dict[str, Any]], *, expected: tuple[int, str]) -> dict[int, int] | None:
    """One statement moves the head from ``expected`` to the last row and inserts the first
    rows (the rest follow, the head then held): position -> id, or None when the head was
    elsewhere, and nothing was written.

    The compare-and-set is the chain's guard: the head row moves only from the very state
    the hashes were computed from, and its row lock is then held to the commit.
    """
    head_table, event_table = AuditChainHead._meta.db_table, AuditEvent._meta.db_table
    columns = ", ".join(_COLUMNS)
    ids: dict[int, int] = {}
    with transaction.get_connection().cursor() as cursor:
        if len(rows) == 1:
            (row,) = rows
            _prepared_statements(cursor)
            cursor.execute(
                "EXECUTE pl_audit_append (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [row["position"], row["hash"], expected[0], expected[1], row["occurred_at"], row["actor"],
                 row["action"], row["object_type"], row["object_id"],
                 str(row["subject_ref"]) if row["subject_ref"] else None, row["details_json"]],
            )
            returned = cursor.fetchall()
            return {position: pk for pk, position in returned} if returned else None
        for start in range(0, len(rows), MAX_INSERT_ROWS):
            chunk = rows[start:start + MAX_INSERT_ROWS]
            values = ", ".join([_ROW_SQL] * len(chunk))
            params: list[Any] = []
            for row in chunk:
                params += [row["position"], row["prev_hash"], row["hash"], row["occurred_at"], row["actor"],
                           row["action"], row["object_type"], row["object_id"],
                           str(row["subject_ref"]) if row["subject_ref"] else None, row["details_json"]]
            if start == 0:
                sql = (
                    f"WITH moved AS (UPDATE {head_table} SET position = %s, hash = %s"
                    f" WHERE id = 1 AND position = %s AND hash = %s RETURNING 1)"
                    f" INSERT INTO {event_table} ({columns}) SELECT v.* FROM (VALUES {values}) AS v ({columns})"
                    f" WHERE EXISTS (SELECT 1 FROM moved) RETURNING id, position"
                )
                params = [rows[-1]["position"], rows[-1]["hash"], expected[0], expected[1], *params]
            else:
                sql = f"INSERT INTO {event_table} ({columns}) VALUES {values} RETURNING id, position"
            cursor.execute(sql, params)
            returned = cursor.fetchall()
            if start == 0 and not returned:
                return None
            ids.update((position, pk) for pk, position in returned)
    return ids


def _append_orm(prepared: list[dict[str, Any]]) -> list[AuditEvent]:
    # SQLite (embedded mode) has one writer at a time: the head is read, the rows and the
    # head written through the ORM, in as many statements as the ORM needs.
    head = _lock_chain_head()
    rows = _chain(prepared, position=head.position, prev_hash=head.hash)
    events = AuditEvent.objects.bulk_create([
        AuditEvent(**{key: row[key] for key in _COLUMNS}) for row in rows
    ])
    AuditChainHead.objects.filter(pk=1).update(position=rows[-1]["position"], hash=rows[-1]["hash"])
    return events


def _checkpoint_when_due(*, before: int, after: int) -> None:
    every = settings.AUDIT_CHECKPOINT_EVERY_EVENTS
    if every > 0 and after // every > before // every:
        # After the commit, so a chain that is rolled back is never anchored; the checkpoint
        # then signs the committed head, which may already be past these events.
        transaction.on_commit(_checkpoint_after_commit)


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

    The chain head row is locked first, so concurrent writers queue instead of forking;
    the transaction then holds it, and its further events append in one statement each.
    Never pass a raw identifier or a pseudonym: refer to a person by ``subject_ref``.
    """
    prepared = _event_prepare(
        actor=actor, action=action, object_type=object_type, object_id=object_id, subject_ref=subject_ref,
        details=details,
    )
    # No savepoint: the event belongs to the caller's transaction, and thousands of
    # savepoints in one transaction overflow PostgreSQL's subtransaction cache.
    with transaction.atomic(savepoint=False):
        (event,) = _append([prepared])
    _checkpoint_when_due(before=event.position - 1, after=event.position)
    return event


def audit_events_record(*, events: list[dict[str, Any]]) -> list[AuditEvent]:
    """Append many events in one go, in the order given, inside the caller's transaction:
    one head lock, one multi-row INSERT, the hashes chained in Python. The chain is the one
    one-by-one ``audit_event_record`` calls would write (same positions, links and hashes,
    the timestamp being read once for the batch).

    Each item holds ``audit_event_record``'s keywords. Every event is checked before
    anything is written, so one invalid event (details that are not JSON, an unknown key,
    a malformed ``subject_ref``) raises and writes none of them.
    """
    prepared = []
    for index, event in enumerate(events):
        unknown = set(event) - AUDIT_EVENT_KEYS
        if unknown:
            raise TypeError(f"audit event {index}: unknown keys {sorted(unknown)}")
        try:
            prepared.append(_event_prepare(**event))
        except (TypeError, ValueError) as exc:
            # Which event of the batch, for the caller's log; the class stays the one raised.
            raise (TypeError if isinstance(exc, TypeError) else ValueError)(f"audit event {index}: {exc}") from exc
    if not prepared:
        return []
    with transaction.atomic(savepoint=False):
        recorded = _append(prepared)
    _checkpoint_when_due(before=recorded[0].position - 1, after=recorded[-1].position)
    return recorded


def audit_chain_verification_record(*, ok: bool, checked: int, broken_position: int | None, reason: str) -> AuditEvent:
    """Record the outcome of a periodic verification in the chain itself, so gaps in checking show."""
    return audit_event_record(
        actor=SYSTEM_ACTOR,
        action="audit.verified" if ok else "audit.verification_failed",
        object_type="audit_chain",
        details={"checked": checked, "broken_position": broken_position, "reason": reason},
    )


# --- Signed checkpoints (governance.checkpoints) -----------------------------------------------


def _checkpoint_after_commit() -> None:
    # The events are committed whatever happens here: a checkpoint that cannot be written is
    # logged (audit_verify then reports it missing), never raised into the caller's request.
    try:
        audit_checkpoint_write(reason="events")
    except Exception:
        logger.exception("audit checkpoint after %s events not written", settings.AUDIT_CHECKPOINT_EVERY_EVENTS)


def _committed_head() -> tuple[int, str]:
    head = AuditChainHead.objects.filter(pk=1).values_list("position", "hash").first()
    return head or (0, audit.GENESIS_HASH)


def audit_checkpoint_write(*, reason: str = "manual", only_if_moved: bool = True) -> checkpoints.Checkpoint | None:
    """Sign the committed chain head and append it to the checkpoint file; returns it, or
    None when the chain is empty (or, with ``only_if_moved``, the last checkpoint is of this
    very head).

    Called outside any transaction (after a commit, from the beat task or the command), so
    the head it reads is committed. The file lock is held from reading the head to the
    append, so checkpoints of concurrent writers are in the order of their positions.
    """
    if transaction.get_connection().in_atomic_block:
        raise ServiceConflict(
            "An audit checkpoint is written after the commit (transaction.on_commit), never inside a transaction: "
            "it would anchor events that may still be rolled back."
        )
    key = _signing_key_or_conflict()
    with audit_anchor.checkpoint_file().locked() as appender:
        position, digest = _committed_head()
        if position == 0:
            return None
        last = appender.last()
        # A head that went back is signed too: the verifier then sees the chain went backwards.
        if only_if_moved and last is not None and (last.position, last.hash) == (position, digest):
            return None
        cp = checkpoints.checkpoint_sign(private_key=key, position=position, hash=digest, reason=reason)
        appender.append(cp)
    return cp


def audit_checkpoint_sign_head(*, reason: str) -> checkpoints.Checkpoint:
    """Sign the chain head this transaction sees, now, and append it to the file when the
    transaction commits: for a document (an erasure certificate) that prints the checkpoint
    covering its events. A rollback discards both the document and the checkpoint.
    """
    key = _signing_key_or_conflict()
    position, digest = _committed_head()
    cp = checkpoints.checkpoint_sign(private_key=key, position=position, hash=digest, reason=reason)

    def append() -> None:
        try:
            audit_anchor.checkpoint_file().append(cp)
        except Exception:
            logger.exception("audit checkpoint at position %s (%s) not appended to the file", position, reason)

    transaction.on_commit(append)
    return cp


def _signing_key_or_conflict():
    try:
        return audit_anchor.signing_key()
    except audit_anchor.AuditSigningKeyMissing as exc:
        raise ServiceConflict(str(exc)) from exc
