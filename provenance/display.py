"""Snapshot figures in people's words, shared by the admin and the reports."""

from __future__ import annotations

from typing import Any

# Snapshot.excluded_counts keys: why records were left out of a snapshot.
EXCLUSION_LABELS = {
    "no_consent": "No consent recorded for the purpose",
    "withdrawn": "Consent withdrawn",
    "expired": "Consent expired",
    "retention_passed": "Retention period passed (Art. 5(1)(e))",
    "restricted": "Processing restricted (Art. 18)",
    "objected": "Objected to the purpose (Art. 21)",
}


def exclusion_label(reason: str) -> str:
    return EXCLUSION_LABELS.get(reason, reason.replace("_", " "))


def exclusions_words(excluded_counts: Any) -> str:
    """``Consent withdrawn: 68 records; Consent expired: 44 records``, or "none": the reasons
    that left records out, in the order of EXCLUSION_LABELS, zero counts omitted."""
    counts = excluded_counts if isinstance(excluded_counts, dict) else {}
    order = [*EXCLUSION_LABELS, *sorted(set(counts) - set(EXCLUSION_LABELS))]
    parts = [f"{exclusion_label(r)}: {counts[r]:,} record{'' if counts[r] == 1 else 's'}"
             for r in order if isinstance(counts.get(r), int) and counts[r]]
    return "; ".join(parts) or "none"
