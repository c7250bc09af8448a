"""The Merkle root of a snapshot's manifest, defined so that anyone can recompute it.

Definition (also in docs/provenance.md):

* leaf = SHA-256 of the UTF-8 text ``f"{record_id}:{content_hash}"`` as lower-case hex,
  one per member record, in ascending record id order;
* a level is reduced by hashing neighbours pairwise: parent = SHA-256 of the UTF-8 text
  ``left_hex + right_hex`` (the two 64-character hex digests concatenated), as hex;
* when a level has an odd number of nodes, the last one is promoted unchanged;
* the root is the single node left. An empty manifest has the root SHA-256("") (the
  hex digest of the empty string).

The computation is streamed: leaves are folded into a stack of at most log2(n) pending
subtrees, so a million-record manifest needs no list of a million hashes in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

EMPTY_ROOT = hashlib.sha256(b"").hexdigest()


def leaf_hash(record_id: int, content_hash: str) -> str:
    return hashlib.sha256(f"{record_id}:{content_hash}".encode()).hexdigest()


def _parent(left: str, right: str) -> str:
    return hashlib.sha256((left + right).encode()).hexdigest()


class MerkleAccumulator:
    """Streaming builder giving the same root as the level-by-level definition.

    Pending subtrees are kept as (height, hash); two subtrees of equal height merge as
    soon as both exist, which is exactly the pairing of the level-by-level reduction. At
    the end, leftover subtrees of different heights are combined from the right: a
    smaller right-hand subtree is promoted unchanged until it reaches the height of its
    left neighbour, which is what "an odd node is promoted" does level by level.
    """

    def __init__(self) -> None:
        self._stack: list[tuple[int, str]] = []
        self.count = 0

    def add_leaf(self, digest: str) -> None:
        self.count += 1
        height, node = 0, digest
        while self._stack and self._stack[-1][0] == height:
            _, left = self._stack.pop()
            node = _parent(left, node)
            height += 1
        self._stack.append((height, node))

    def add(self, record_id: int, content_hash: str) -> None:
        self.add_leaf(leaf_hash(record_id, content_hash))

    def root(self) -> str:
        if not self._stack:
            return EMPTY_ROOT
        # Promotion raises a smaller right subtree's height without changing its hash, so
        # leftovers simply combine right to left.
        node = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            node = _parent(left, node)
        return node


def merkle_root(leaves: Iterable[tuple[int, str]]) -> str:
    """Root over ``(record_id, content_hash)`` pairs, which must come in ascending id order."""
    acc = MerkleAccumulator()
    for record_id, content_hash in leaves:
        acc.add(record_id, content_hash)
    return acc.root()


def merkle_root_from_leaf_hashes(leaf_hashes: Iterable[str]) -> str:
    acc = MerkleAccumulator()
    for digest in leaf_hashes:
        acc.add_leaf(digest)
    return acc.root()
