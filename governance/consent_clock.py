"""When the consent ledger knew something: recorded times that readers can trust.

Rule: an event's ``recorded_at`` is read from the database's clock *inside* a critical
section that every consent-writing transaction holds until it commits; a reader that wants
a moment K of the ledger (a snapshot) waits once for the writers inside it, then reads K.
Hence, for every K a reader obtains:

* every event recorded at or before K had committed before K was read, so any statement
  the reader runs afterwards (READ COMMITTED: each statement sees what committed before it
  started) sees it;
* every event committing later was stamped after K was read: its ``recorded_at`` > K.

So "the events with recorded_at <= K" is one fixed set, the same for the snapshot taken at
K and for anyone asking about K later (``known_at=K`` in the consent selectors). Without
this, READ COMMITTED let a transaction stamp t1, a snapshot read at T > t1 without seeing
it, and the ledger then claim the event was known before T (issue 13, item 9).

PostgreSQL: writers hold a *shared* transaction-level advisory lock (they never wait for
each other); the reader takes the *exclusive* form at session level and drops it right
after reading K, so it waits only for the writers already inside and holds up consent
ingest for one round trip, not for the whole snapshot. A waiting exclusive request queues
later shared requests behind it, so a stream of writers cannot starve a snapshot. K and
the stamps come from the same clock (the server's ``clock_timestamp()``, not ``now()``,
which is the transaction's start and may precede the lock by a long way).

SQLite (embedded mode) has one writer at a time: both sides take the database's write lock
with a write that changes nothing, before the clock is read, and keep it to the end of the
transaction (as any SQLite writer does). The clock is the process's.
"""

from __future__ import annotations

from datetime import datetime

from django.db import connection
from django.utils import timezone

# The advisory-lock key of the consent ledger's critical section ("PLCL"); one bigint key,
# distinct from the model registry's two-key locks.
CONSENT_LEDGER_LOCK_KEY = 0x504C434C


def _sqlite_write_lock() -> None:
    # An UPDATE matching no row still opens the write transaction and takes SQLite's
    # RESERVED lock, which no other connection can hold at the same time.
    with connection.cursor() as cursor:
        cursor.execute("UPDATE governance_auditchainhead SET position = position WHERE 1 = 0")


def consent_recorded_at_stamp() -> datetime:
    """Enter the ledger's critical section for the rest of the current transaction and
    return the recorded time for the events it writes.

    Call it after validation, immediately before inserting events: the section lasts until
    commit, and a snapshot waits for the transactions inside it.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("consent events are stamped inside the transaction that writes them")
    if connection.vendor != "postgresql":
        _sqlite_write_lock()
        return timezone.now()
    with connection.cursor() as cursor:
        # OFFSET 0 keeps the subquery (the lock) evaluated before the clock is read.
        cursor.execute(
            "SELECT clock_timestamp() FROM (SELECT pg_advisory_xact_lock_shared(%s) OFFSET 0) AS locked",
            [CONSENT_LEDGER_LOCK_KEY],
        )
        return cursor.fetchone()[0]


def consent_ledger_moment() -> datetime:
    """A moment K such that the events with recorded_at <= K are exactly those committed
    now: waits for the consent transactions in flight, then reads K.

    For a reader inside a transaction (a snapshot). On PostgreSQL the lock is released at
    once; on SQLite the write lock is kept until the transaction ends.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("the ledger's moment is read inside the transaction that reads the ledger")
    if connection.vendor != "postgresql":
        _sqlite_write_lock()
        return timezone.now()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [CONSENT_LEDGER_LOCK_KEY])
        try:
            # One statement reads K and releases the lock; the subquery runs first.
            cursor.execute(
                "SELECT k, pg_advisory_unlock(%s) FROM (SELECT clock_timestamp() AS k OFFSET 0) AS moment",
                [CONSENT_LEDGER_LOCK_KEY],
            )
            moment, _ = cursor.fetchone()
        except BaseException:
            # The unlock may not have run; a session lock outlives the transaction and would
            # block every consent ingest on this (persistent) connection. Closing drops it.
            connection.close()
            raise
    return moment
