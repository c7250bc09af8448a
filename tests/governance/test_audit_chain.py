"""The audit log is a hash chain: any change behind the service's back is found at its position."""

from __future__ import annotations

import uuid

import pytest
from django.core.management import call_command
from django.db import connection

from governance.models import AuditChainHead, AuditEvent
from governance.selectors import audit_chain_verify
from governance.services import audit_event_record
from tests.governance.audit_helpers import audit_events_write_concurrently


def _write_events(n: int) -> None:
    for i in range(n):
        audit_event_record(actor="tester", action="test.event", object_type="thing", object_id=i, details={"i": i, "x": 0.1})


def _raw(sql: str, params=()) -> None:
    # Tampering goes around the ORM guard on purpose: that is what an attacker with DB access does.
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


@pytest.mark.django_db
def test_intact_chain_verifies_and_command_exits_zero(capsys):
    _write_events(5)
    result = audit_chain_verify()
    assert result.ok and result.checked == 5
    call_command("audit_verify")
    assert "5 events checked" in capsys.readouterr().out


@pytest.mark.django_db
def test_orm_refuses_update_and_delete_of_audit_rows():
    from governance.models import AppendOnlyError

    _write_events(2)
    event = AuditEvent.objects.first()
    event.action = "changed"
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=event.pk).update(action="x")
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.all().delete()


@pytest.mark.django_db
def test_update_is_found_at_its_position():
    _write_events(6)
    _raw("UPDATE governance_auditevent SET details = %s WHERE position = 4", ['{"i": 99, "x": 0.1}'])
    result = audit_chain_verify()
    assert not result.ok and result.broken_position == 4
    assert "altered" in result.reason


@pytest.mark.django_db
def test_actor_change_is_found():
    _write_events(3)
    _raw("UPDATE governance_auditevent SET actor = 'mallory' WHERE position = 2")
    assert audit_chain_verify().broken_position == 2


@pytest.mark.django_db
def test_delete_in_the_middle_is_found_at_the_gap():
    _write_events(6)
    _raw("DELETE FROM governance_auditevent WHERE position = 3")
    result = audit_chain_verify()
    assert not result.ok and result.broken_position == 3


@pytest.mark.django_db
def test_delete_and_renumber_is_found_by_the_broken_link():
    _write_events(6)
    _raw("DELETE FROM governance_auditevent WHERE position = 3")
    for position in (4, 5, 6):
        _raw("UPDATE governance_auditevent SET position = %s WHERE position = %s", [position - 1, position])
    result = audit_chain_verify()
    assert not result.ok and result.broken_position == 3


@pytest.mark.django_db
def test_truncation_of_the_tail_is_found_against_the_head():
    _write_events(5)
    _raw("DELETE FROM governance_auditevent WHERE position >= 4")
    result = audit_chain_verify()
    assert not result.ok and result.broken_position == 4
    assert "chain head" in result.reason


@pytest.mark.django_db
def test_inserted_row_is_found():
    _write_events(4)
    first = AuditEvent.objects.get(position=1)
    _raw("UPDATE governance_auditevent SET position = position + 100 WHERE position >= 3")
    _raw(
        "INSERT INTO governance_auditevent (position, prev_hash, hash, occurred_at, actor, action, object_type, object_id, details)"
        " VALUES (3, %s, %s, %s, 'mallory', 'forged', '', '', '{}')",
        [AuditEvent.objects.get(position=2).hash, uuid.uuid4().hex * 2, first.occurred_at],
    )
    _raw("UPDATE governance_auditevent SET position = position - 99 WHERE position >= 103")
    result = audit_chain_verify()
    assert not result.ok and result.broken_position == 3


@pytest.mark.django_db
def test_reorder_is_found():
    _write_events(5)
    _raw("UPDATE governance_auditevent SET position = -1 WHERE position = 2")
    _raw("UPDATE governance_auditevent SET position = 2 WHERE position = 3")
    _raw("UPDATE governance_auditevent SET position = 3 WHERE position = -1")
    result = audit_chain_verify()
    assert not result.ok and result.broken_position == 2


@pytest.mark.django_db
def test_audit_verify_command_exits_non_zero_naming_the_position(capsys):
    _write_events(4)
    _raw("UPDATE governance_auditevent SET action = 'edited' WHERE position = 2")
    with pytest.raises(SystemExit) as excinfo:
        call_command("audit_verify")
    assert excinfo.value.code == 1
    assert "position 2" in capsys.readouterr().err


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_keep_one_chain():
    if connection.vendor != "postgresql":
        pytest.skip("concurrent writers need a server database; SQLite serialises writers itself")
    errors = audit_events_write_concurrently(writers=6, events_each=15)
    assert not errors, errors
    assert AuditEvent.objects.count() == 90
    assert sorted(AuditEvent.objects.values_list("position", flat=True)) == list(range(1, 91))
    result = audit_chain_verify()
    assert result.ok and result.checked == 90
    assert AuditChainHead.objects.get(pk=1).position == 90
