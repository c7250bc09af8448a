"""Batches of audit events (issue 21, item 3): ``audit_events_record`` appends many events with
one head lock and one multi-row INSERT, and the chain it writes is the one one-by-one appends
would write; a batch is all or nothing; batches and single events from concurrent writers
make one unbroken chain."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime

import pytest
from django.db import connection, connections, transaction

from governance import audit, audit_anchor, checkpoints
from governance.audit_anchor import audit_chain_anchored_verify
from governance.models import AuditChainHead, AuditEvent
from governance.selectors import audit_chain_verify
from governance.services import audit as audit_service
from governance.services import audit_event_record, audit_events_record

FROZEN = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC)


def _events(n: int, *, tag: str = "b", person: uuid.UUID | None = None) -> list[dict]:
    person = person or uuid.uuid4()
    return [
        {"actor": f"user-{i % 3}", "action": f"test.{tag}", "object_type": "thing", "object_id": i,
         "subject_ref": person if i % 2 else None,
         "details": {"i": i, "x": 0.1, "nested": {"b": [1, 2], "a": "é"}, "when": FROZEN}}
        for i in range(n)
    ]


def _chain_rows(start: int) -> list[tuple[int, str, str]]:
    return list(AuditEvent.objects.filter(position__gt=start).order_by("position").values_list("position", "prev_hash", "hash"))


def _head() -> tuple[int, str]:
    head = AuditChainHead.objects.filter(pk=1).first()
    return (head.position, head.hash) if head else (0, audit.GENESIS_HASH)


class _Discard(Exception):
    pass


@pytest.mark.django_db
def test_a_batch_writes_exactly_the_chain_one_by_one_appends_would(monkeypatch):
    # One clock for both runs: a batch reads the time once, one-by-one appends once each.
    monkeypatch.setattr(audit_service.timezone, "now", lambda: FROZEN)
    for i in range(3):
        audit_event_record(actor="before", action="test.prefix", details={"i": i})
    start, _ = _head()
    person = uuid.uuid4()

    with pytest.raises(_Discard), transaction.atomic():
        returned = audit_events_record(events=_events(7, person=person))
        batch = _chain_rows(start)
        raise _Discard  # roll the batch back, then append the same events one by one
    assert _head()[0] == start and AuditEvent.objects.count() == start

    for event in _events(7, person=person):
        audit_event_record(**event)
    one_by_one = _chain_rows(start)

    assert batch == one_by_one
    assert [e.position for e in returned] == list(range(start + 1, start + 8))
    assert [(e.position, e.prev_hash, e.hash) for e in returned] == batch
    assert batch[0][1] == AuditEvent.objects.get(position=start).hash
    result = audit_chain_verify()
    assert result.ok and result.checked == start + 7


@pytest.mark.django_db
def test_a_batch_and_the_single_events_after_it_verify_and_move_the_head():
    audit_event_record(actor="first", action="test.single")
    # Larger than one INSERT statement holds, so the batch is written in several.
    returned = audit_events_record(events=_events(audit_service.MAX_INSERT_ROWS + 250))
    audit_event_record(actor="last", action="test.single", details={"after": "batch"})

    total = audit_service.MAX_INSERT_ROWS + 252
    assert AuditEvent.objects.count() == total
    assert _head() == (total, AuditEvent.objects.get(position=total).hash)
    result = audit_chain_verify()
    assert result.ok and result.checked == total
    # What the service returns is what is stored, read back.
    stored = AuditEvent.objects.get(pk=returned[10].pk)
    assert (stored.position, stored.hash, stored.actor, stored.details) == (
        returned[10].position, returned[10].hash, returned[10].actor, returned[10].details)
    assert stored.details["when"] == str(FROZEN)  # stored as it was hashed, not as it was passed


@pytest.mark.django_db
def test_an_empty_batch_writes_nothing():
    assert audit_events_record(events=[]) == []
    assert AuditEvent.objects.count() == 0


@pytest.mark.parametrize(
    ("bad", "error", "says"),
    [
        ({"details": {("tuple", "key"): 1}}, TypeError, "audit event 2"),  # not JSON-serialisable
        ({"details": {"ratio": float("nan")}}, ValueError, "NaN"),  # jsonb refuses it
        ({"subject_ref": "not-a-uuid"}, ValueError, "audit event 2"),
        ({"colour": "red"}, TypeError, "unknown keys ['colour']"),
    ],
)
@pytest.mark.django_db
def test_a_batch_with_one_invalid_event_writes_nothing(bad, error, says):
    audit_event_record(actor="before", action="test.prefix")
    before = _head()
    events = _events(5)
    events[2] = {**events[2], **bad}
    with pytest.raises(error, match=says.replace("[", r"\[").replace("]", r"\]")):
        audit_events_record(events=events)
    assert AuditEvent.objects.count() == 1
    assert _head() == before
    # The chain goes on from where it was.
    audit_events_record(events=_events(3))
    result = audit_chain_verify()
    assert result.ok and result.checked == 4


@pytest.mark.django_db
def test_events_after_a_rolled_back_savepoint_chain_from_the_committed_head():
    # The transaction's remembered head is only a hint: after a savepoint rollback the
    # events must link to what is really there, not to the events that were undone.
    audit_events_record(events=_events(4))
    with pytest.raises(_Discard), transaction.atomic():
        audit_event_record(actor="undone", action="test.undone")
        audit_events_record(events=_events(3))
        raise _Discard
    audit_event_record(actor="kept", action="test.kept")
    audit_events_record(events=_events(2))
    assert list(AuditEvent.objects.values_list("position", flat=True)) == list(range(1, 8))
    assert not AuditEvent.objects.filter(action="test.undone").exists()
    result = audit_chain_verify()
    assert result.ok and result.checked == 7


@pytest.mark.django_db(transaction=True)
def test_a_batch_crossing_a_checkpoint_multiple_is_anchored_after_commit(settings):
    settings.AUDIT_CHECKPOINT_EVERY_EVENTS = 10
    settings.AUDIT_CHECKPOINT_SLACK_EVENTS = 10
    audit_events_record(events=_events(4))
    assert audit_anchor.checkpoint_file().lines() == []
    audit_events_record(events=_events(23))  # positions 5..27 cross 10 and 20
    parsed = [checkpoints.checkpoint_parse(line) for line in audit_anchor.checkpoint_file().lines()]
    assert [(cp.position, cp.reason) for cp in parsed] == [(27, "events")]  # the committed head, once
    result = audit_chain_anchored_verify()
    assert result.ok, result.problems


@pytest.mark.django_db(transaction=True)
def test_concurrent_batches_and_single_events_make_one_unbroken_chain():
    if connection.vendor != "postgresql":
        pytest.skip("concurrent writers need a server database; SQLite serialises writers itself")
    writers, rounds = 4, 6
    errors: list[BaseException] = []
    start = threading.Barrier(writers)

    def writer(w: int) -> None:
        try:
            start.wait()
            for r in range(rounds):
                tag = f"w{w}r{r}"
                if (w + r) % 3 == 0:
                    audit_events_record(events=[{**e, "actor": tag} for e in _events(5 + w)])
                elif (w + r) % 3 == 1:
                    audit_event_record(actor=tag, action="test.single", details={"w": w, "r": r})
                else:  # both in one transaction, the single event first
                    with transaction.atomic():
                        audit_event_record(actor=tag, action="test.single", details={"w": w, "r": r})
                        audit_events_record(events=[{**e, "actor": tag} for e in _events(3)])
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors

    expected = 0
    for w in range(writers):
        for r in range(rounds):
            expected += {0: 5 + w, 1: 1, 2: 4}[(w + r) % 3]
    positions = list(AuditEvent.objects.order_by("position").values_list("position", flat=True))
    assert positions == list(range(1, expected + 1))  # no gap, no duplicate
    result = audit_chain_verify()
    assert result.ok and result.checked == expected
    assert _head()[0] == expected
    # Each transaction's events are contiguous: nobody's event lands inside another's batch.
    for w in range(writers):
        for r in range(rounds):
            mine = list(AuditEvent.objects.filter(actor=f"w{w}r{r}").values_list("position", flat=True))
            assert mine == list(range(mine[0], mine[0] + len(mine)))
