"""Whether a snapshot may be used now, for training in the ledger or for export to train
elsewhere: the one home of the rule both follow (mlops's training runs call it through
``mlops.services.queueing``, the export through ``provenance.services.export``).

A reconstruction records what was lawful at a past moment; people covered then may have
withdrawn since, so it is never used. A current snapshot may be days old: its members are
checked against the consent ledger as committed now (one query), and any withdrawal or
expiry since it was taken, a restriction (Art. 18) or an objection to the purpose (Art. 21)
stops the use. Records rectified since it was taken (Art. 16) stop a new use too.
"""

from __future__ import annotations

from django.db import transaction

from governance.services import ServiceConflict
from provenance.models import Snapshot, SnapshotKind
from provenance.selectors import (
    snapshot_members_limited,
    snapshot_members_no_longer_covered,
    snapshot_members_superseded,
)

# use → (what the snapshot is never, what to do instead)
USES = {
    "train": ("trained on", "train on that"),
    "export": ("exported to be trained on elsewhere", "export that"),
}


def _people(n: int) -> str:
    return "1 person" if n == 1 else f"{n} people"


def snapshot_use_refuse(*, snapshot: Snapshot, use: str) -> None:
    """Refuse (409, ``field="snapshot"``) to use ``snapshot`` unless it is current and
    everyone still in it is covered for its purpose now: consent valid, not restricted,
    not objecting. ``use``: "train" or "export" (the wording of the refusal)."""
    from governance.consent_clock import consent_ledger_moment

    never, instead = USES[use]
    if snapshot.kind != SnapshotKind.CURRENT:
        raise ServiceConflict(
            f"Snapshot {snapshot.pk} is a reconstruction of {snapshot.taken_for.isoformat()} (what was lawful then) "
            f"and is never {never}: take a snapshot for now and {instead}.",
            field="snapshot",
        )
    with transaction.atomic():  # the ledger's moment is read inside the reading transaction
        now = consent_ledger_moment()
        lost = snapshot_members_no_longer_covered(snapshot=snapshot, at=now)
        limited = snapshot_members_limited(snapshot=snapshot, at=now)
    if limited["restricted"] or limited["objected"]:
        # Art. 18(1): a restricted person's data are only stored; Art. 21: an objection
        # stops the processing for the purpose. Neither may be used from now on.
        parts = []
        if limited["restricted"]:
            parts.append(f"{_people(limited['restricted'])} whose processing is restricted (Art. 18)")
        if limited["objected"]:
            verb = "objects" if limited["objected"] == 1 else "object"
            parts.append(f"{_people(limited['objected'])} who {verb} to {snapshot.purpose.code} (Art. 21)")
        raise ServiceConflict(
            f"Snapshot {snapshot.pk} holds {' and '.join(parts)} as of now. Take a new snapshot, which leaves "
            f"them out, and {instead}.",
            field="snapshot", restricted=limited["restricted"], objected=limited["objected"],
        )
    if lost:
        raise ServiceConflict(
            f"Snapshot {snapshot.pk}: {_people(lost)} in it {'is' if lost == 1 else 'are'} no longer covered for "
            f"{snapshot.purpose.code} (consent withdrawn, expired or not recorded) as of now. Take a fresh "
            f"snapshot and {instead}.",
            field="snapshot", no_longer_covered=lost,
        )


def snapshot_rectified_refuse(*, snapshot: Snapshot) -> None:
    """Refuse (409) a new use of a snapshot holding records rectified since it was taken
    (Art. 16): a model trained on it would learn values known to be wrong."""
    superseded = snapshot_members_superseded(snapshot=snapshot)
    if superseded:
        raise ServiceConflict(
            f"Snapshot {snapshot.pk} holds {superseded} record(s) rectified since it was taken (Art. 16): a model "
            "trained on it would learn the old values. Take a new snapshot, which holds the corrected ones.",
            field="snapshot", rectified=superseded,
        )
