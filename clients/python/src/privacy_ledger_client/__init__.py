"""Client of the Privacy Ledger.

``LedgerClient`` needs only ``requests``; ``snapshot_dataset`` and ``private_training`` need the
``torch`` extra, ``snapshot_frame`` the ``pandas`` extra, ``privacy_ledger_client.mlflow`` the
``mlflow`` extra.
"""

from privacy_ledger_client.client import (
    EXPORT_FORMATS,
    ExternalRun,
    LedgerClient,
    ModelStatus,
    ReportResult,
    SnapshotExport,
    sha256_file,
)
from privacy_ledger_client.errors import LedgerError, LedgerIntegrityError

__all__ = [
    "EXPORT_FORMATS",
    "ExternalRun",
    "LedgerClient",
    "LedgerError",
    "LedgerIntegrityError",
    "ModelStatus",
    "ReportResult",
    "SnapshotExport",
    "sha256_file",
]
__version__ = "0.1.0"
