"""Named signals governance sends upward, always after the commit of what they announce.

A lower layer never imports a higher one: an app above (rights, assessments) that must
react to something here connects a receiver to one of these signals in its ``ready``.
Each is sent from ``transaction.on_commit``, so a receiver never sees (or acts on) work
that is later rolled back, and a receiver's failure never undoes the sender's write; the
one exception, ``subject_erasing``, says why below.
"""

from __future__ import annotations

from django.db import transaction
from django.dispatch import Signal

# Consent withdrawals were committed to the ledger.
# kwargs: consent_event_ids (list[str], the new withdrawal events), actor
consent_withdrawn = Signal()

# A person's objection (Art. 21) to processing for a purpose was committed.
# kwargs: subject_id (int), purpose_code (str), objection_id (int), actor
processing_objected = Signal()

# A person's subject row is being deleted by an erasure (Art. 17). The one signal sent
# *inside* the sender's transaction, not on commit: what an app above holds under the
# person's pseudonym (a decision's subject, kept inputs) must go in the same commit as the
# row, or the erasure would be certified while a killed process left the link behind. A
# receiver's error therefore rolls the erasure step back, and the step is retried.
# kwargs: subject_id (int), pseudonym (str)
subject_erasing = Signal()


def send_on_commit(signal: Signal, **kwargs) -> None:
    """Send ``signal`` once the current transaction commits; receivers' errors are logged
    by ``send_robust`` rather than raised into the committed sender."""
    transaction.on_commit(lambda: _send(signal, kwargs))


def _send(signal: Signal, kwargs: dict) -> None:
    import logging

    for receiver, response in signal.send_robust(sender=None, **kwargs):
        if isinstance(response, Exception):
            logging.getLogger(__name__).error(
                "receiver %r of a governance signal failed: %r", receiver, response, exc_info=response
            )
