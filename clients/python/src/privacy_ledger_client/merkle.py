"""The ledger's Merkle root, recomputed from exported rows (definition in docs/provenance.md).

leaf = SHA-256 of ``f"{record_id}:{content_hash}"`` in ascending record id, content_hash =
SHA-256 of the canonical JSON (keys sorted, separators "," and ":", no ASCII escaping) of
``{"features": {...}, "label": ...}``; parent = SHA-256 of ``left_hex + right_hex``; an odd
last node is promoted; an empty manifest's root is SHA-256 of "". Recomputing it from a JSON
Lines export proves the rows are exactly the snapshot's members with their recorded values.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any


def content_hash(features: dict[str, Any], label: Any) -> str:
    canonical = json.dumps({"features": features, "label": label}, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def schema_sha256(schema: dict) -> str:
    """What the export's ``X-Ledger-Schema`` header states."""
    canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def merkle_root(leaves: Iterable[tuple[int, str]]) -> str:
    """Root over (record_id, content_hash) pairs given in ascending record id."""
    level = [hashlib.sha256(f"{rid}:{digest}".encode()).hexdigest() for rid, digest in leaves]
    if not level:
        return hashlib.sha256(b"").hexdigest()
    while len(level) > 1:
        paired = [hashlib.sha256((level[i] + level[i + 1]).encode()).hexdigest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]
