"""Concurrent writers of the audit chain, shared by the chain and checkpoint tests."""

from __future__ import annotations

import threading

from django.db import connections

from governance.services import audit_event_record


def audit_events_write_concurrently(*, writers: int, events_each: int) -> list[Exception]:
    """``writers`` threads, each on its own connection, append ``events_each`` events; returns
    the errors they met (none expected)."""
    errors: list[Exception] = []

    def writer() -> None:
        try:
            for i in range(events_each):
                audit_event_record(actor=f"w{threading.get_ident()}", action="test.concurrent", details={"i": i})
        except Exception as exc:  # surfaced by the caller's assertion
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer) for _ in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
