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
BLOCK_HEIGHT = 12
BLOCK = 1 << BLOCK_HEIGHT


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

    def _add_subtree(self, height: int, node: str) -> None:
        while self._stack and self._stack[-1][0] == height:
            _, left = self._stack.pop()
            node = _parent(left, node)
            height += 1
        self._stack.append((height, node))

    def add_leaves(self, digests: list[str]) -> None:
        """Add many leaves at once; faster than add_leaf for long runs.

        Whole blocks of BLOCK leaves are reduced level by level (a block of a power of two
        leaves is a perfect subtree); a shorter tail is folded leaf by leaf, so the result
        is the same as adding each leaf in turn.
        """
        sha = hashlib.sha256
        start = 0
        # Only a block aligned on a multiple of BLOCK leaves is a perfect subtree here.
        while self.count % BLOCK and start < len(digests):
            self.add_leaf(digests[start])
            start += 1
        while len(digests) - start >= BLOCK:
            level = digests[start : start + BLOCK]
            while len(level) > 1:
                level = [sha((level[i] + level[i + 1]).encode()).hexdigest() for i in range(0, len(level), 2)]
            self.count += BLOCK
            self._add_subtree(BLOCK_HEIGHT, level[0])
            start += BLOCK
        for digest in digests[start:]:
            self.add_leaf(digest)

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
    acc.add_leaves(list(leaf_hashes))
    return acc.root()
