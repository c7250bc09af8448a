"""The ``DataSubject`` rows that stand for people: creating them in bulk from pseudonyms,
and deleting a person's consent history and subject row when the rights app's erasure
workflow (Art. 17) calls for it.

Every app that records data about people (provenance, the consent ledger) maps
pseudonyms to subjects here, and the erasure workflow removes them here.
"""

from __future__ import annotations

from django.db import transaction


def data_subject_ensure_many(*, pseudonyms: list[str], chunk_size: int = 20000) -> dict[str, int]:
    """Map pseudonyms to DataSubject ids, creating the missing subjects in bulk.

    Takes pseudonyms (see governance.pseudonymisation), never raw identifiers, computed under
    the current NORMALISATION_VERSION, which a new subject records. An existing subject keeps
    the version it was created under: a pseudonym that matches it is the same under both.
    Set-based: one INSERT … ON CONFLICT DO NOTHING and one SELECT per chunk.
    """
    from governance.models import DataSubject
    from governance.pseudonymisation import NORMALISATION_VERSION

    # Sorted: concurrent callers then insert shared keys in the same order, so they queue on
    # the unique index instead of deadlocking.
    unique = sorted(set(pseudonyms))
    mapping: dict[str, int] = {}
    with transaction.atomic():
        for start in range(0, len(unique), chunk_size):
            chunk = unique[start : start + chunk_size]
            DataSubject.objects.bulk_create(
                [DataSubject(pseudonym=p, normalisation_version=NORMALISATION_VERSION) for p in chunk],
                ignore_conflicts=True, batch_size=chunk_size,
            )
            mapping.update(DataSubject.objects.filter(pseudonym__in=chunk).values_list("pseudonym", "id"))
    return mapping


@transaction.atomic
def consent_events_erase(*, subject_id: int) -> int:
    """Delete a person's consent history for an Art. 17 erasure; returns how many events.

    The ledger is append-only for everything else; the audit chain keeps the erasure."""
    from governance.models import ConsentEvent

    return ConsentEvent.objects.filter(subject_id=subject_id)._erasure_delete()


@transaction.atomic
def data_subject_erase(*, subject_id: int) -> dict[str, int]:
    """Delete the person's subject row once their data are gone; returns rows deleted per model.

    The ORM delete follows the foreign keys: SISA placements go with the row, a request's
    link to it is cleared, and any row still protecting the subject (a record, a snapshot
    membership, a consent event) stops the delete here. Before it, ``subject_erasing`` lets
    the apps above drop what they hold under the person's pseudonym, in this transaction.
    """
    from governance.models import DataSubject
    from governance.signals import subject_erasing

    pseudonym = DataSubject.objects.filter(pk=subject_id).values_list("pseudonym", flat=True).first()
    if pseudonym is not None:
        # Inside this transaction (see governance.signals): the apps above unlink the person
        # in the same commit; an error in one rolls the erasure back.
        subject_erasing.send(sender=None, subject_id=subject_id, pseudonym=pseudonym)
    _, by_model = DataSubject.objects.filter(pk=subject_id).delete()
    return by_model
