"""Audit chain append rate through the service, against bare INSERTs of the same rows."""

from __future__ import annotations

import time
import uuid

from django.db import connection, transaction
from django.utils import timezone

from benchmarks.harness import BenchContext, Result
from governance.services import audit_event_record


def run(ctx: BenchContext) -> list[Result]:
    n = ctx.n(5000, 100)
    start = time.perf_counter()
    with transaction.atomic():
        for i in range(n):
            audit_event_record(actor="bench", action="bench.event", object_type="bench", object_id=i, details={"i": i})
    service_rate = n / (time.perf_counter() - start)

    with connection.cursor() as cur:
        cur.execute("CREATE TEMP TABLE bench_audit_bare (LIKE governance_auditevent INCLUDING DEFAULTS)")
        now = timezone.now()
        start = time.perf_counter()
        with transaction.atomic():
            for i in range(n):
                cur.execute(
                    "INSERT INTO bench_audit_bare (id, position, prev_hash, hash, occurred_at, actor, action, object_type, object_id, subject_ref, details)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [i, i, "0" * 64, uuid.uuid4().hex * 2, now, "bench", "bench.event", "bench", str(i), None, '{"i": 1}'],
                )
        bare_rate = n / (time.perf_counter() - start)
        cur.execute("DROP TABLE bench_audit_bare")
    return [
        Result(
            name="audit events appended per second (hash chain, head lock)",
            value=service_rate, unit="events/s", baseline="bare INSERT one row at a time",
            baseline_value=bare_rate, target="ratio >= 0.2",
        )
    ]
