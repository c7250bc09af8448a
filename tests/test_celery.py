"""Celery is configured for safe retries, and a real worker runs tasks from the queue."""

from __future__ import annotations

import pytest

from config.celery import app


def test_celery_is_json_only_and_acks_late():
    conf = app.conf
    assert conf.task_serializer == "json"
    assert conf.result_serializer == "json"
    assert conf.accept_content == ["json"]
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.task_soft_time_limit < conf.task_time_limit
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_worker_runs_the_audit_verification_task(celery_worker):
    from governance.models import AuditEvent
    from governance.services import audit_event_record
    from governance.tasks import verify_audit_chain

    audit_event_record(actor="tester", action="test.event")
    result = verify_audit_chain.delay()
    assert result.get(timeout=60) == {"ok": True, "checked": 1, "broken_position": None}
    assert AuditEvent.objects.filter(action="audit.verified").count() == 1
