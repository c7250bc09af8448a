"""The records an audit attacks: one deterministic sample of a version's members and
non-members, shared by every attack so they all speak of the same people."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from django.conf import settings

from governance.services import ServiceConflict
from mlops import data
from mlops.models import TrainingRun
from mlops.services.training import _split_tensors

SAMPLING_RULE = (
    "members: the run's training records; non-members: the records of persons held out for the audit; "
    "each side, when above the limit, sampled uniformly without replacement with numpy default_rng(seed), "
    "members first"
)


@dataclass
class AuditSample:
    tensors: data.SnapshotTensors
    members: np.ndarray  # row indices into tensors, sorted
    nonmembers: np.ndarray
    members_available: int
    nonmembers_available: int
    seed: int
    limit: int


def audit_sample_rows(
    *, run: TrainingRun, split: np.ndarray, labelled: np.ndarray, limit: int
) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    """(member rows, non-member rows, members available, non-members available, seed), as
    positions in the snapshot's record order (by record id): the one sampling rule
    (SAMPLING_RULE). Every attack and ``audits.audit_record_ids`` (what an outsider is told
    was attacked) draw through it, so they cannot differ."""
    members = np.nonzero(labelled & (split == data.SPLIT_TRAIN))[0]
    nonmembers = np.nonzero(labelled & (split == data.SPLIT_HOLDOUT))[0]
    members_available, nonmembers_available = len(members), len(nonmembers)
    # A negative seed cannot seed a SeedSequence; the API only accepts seeds ≥ 0.
    seed = abs(int(run.seed))
    rng = np.random.default_rng(seed)
    if len(members) > limit:
        members = np.sort(rng.choice(members, size=limit, replace=False))
    if len(nonmembers) > limit:
        nonmembers = np.sort(rng.choice(nonmembers, size=limit, replace=False))
    return members, nonmembers, members_available, nonmembers_available, seed


def audit_sample(*, run: TrainingRun, limit: int | None = None) -> AuditSample:
    """Members and non-members of ``run``'s audits, read from its snapshot as it is now (an
    erasure's amendment removes the people it erased from every later audit).

    Seeded by the run's seed, so every audit of a version, and anyone recomputing one,
    draws the same people. Refused (ServiceConflict) when either side is empty."""
    limit = int(limit or settings.MLOPS_MIA_MAX_EXAMPLES)
    tensors, split, labelled = _split_tensors(run)
    members, nonmembers, members_available, nonmembers_available, seed = audit_sample_rows(
        run=run, split=split, labelled=labelled, limit=limit)
    if nonmembers_available == 0:
        raise ServiceConflict(f"Training run {run.pk} held out no one: there are no non-members to audit against.")
    if members_available == 0:
        raise ServiceConflict(f"Training run {run.pk} trained on no labelled record: there are no members to audit.")
    return AuditSample(
        tensors=tensors, members=members, nonmembers=nonmembers, members_available=members_available,
        nonmembers_available=nonmembers_available, seed=seed, limit=limit,
    )


def audit_sample_rule(sample: AuditSample) -> str:
    return f"{SAMPLING_RULE}; at most {sample.limit:,} of each"
