"""Services that write provenance records, one module per concept (as Zulip split its actions):

- ``datasets``: datasets and their records (ingest of JSON or CSV rows, set-based, all or nothing);
- ``snapshots``: immutable, consent-filtered snapshots with their Merkle roots, and the purpose
  limitation they enforce;
- ``removal``: taking records out of snapshots (amendments) for a retention purge or an erasure;
- ``rectification``: corrected versions of a person's records (Art. 16), the old ones kept
  for the snapshots that hold them and left out of new ones.

Inside the package the imports run one way: ``snapshots`` <- ``removal``. Keyword-only, atomic,
audited, set-based. Callers import from here.
"""

from provenance.services.datasets import (
    MAX_ERRORS_REPORTED,
    dataset_create,
    dataset_records_ingest,
    dataset_records_ingest_csv,
    records_parse_csv,
)
from provenance.services.rectification import record_corrections_validate, record_rectify
from provenance.services.removal import retention_purge, snapshot_records_remove, subject_records_delete
from provenance.services.snapshots import (
    EXCLUSION_REASONS,
    SNAPSHOT_CLOCK_SKEW,
    purpose_permission,
    shortest_retention,
    snapshot_create,
    snapshot_merkle_root,
)

__all__ = [
    "EXCLUSION_REASONS",
    "MAX_ERRORS_REPORTED",
    "SNAPSHOT_CLOCK_SKEW",
    "dataset_create",
    "dataset_records_ingest",
    "dataset_records_ingest_csv",
    "purpose_permission",
    "record_corrections_validate",
    "record_rectify",
    "records_parse_csv",
    "retention_purge",
    "shortest_retention",
    "snapshot_create",
    "snapshot_merkle_root",
    "snapshot_records_remove",
    "subject_records_delete",
]
