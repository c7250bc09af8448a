import hashlib

import pytest

from provenance.merkle import EMPTY_ROOT, merkle_root
from tests.provenance.helpers import merkle_root_independent


def _pairs(n):
    return [(i * 3 + 1, hashlib.sha256(str(i).encode()).hexdigest()) for i in range(n)]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 31, 33, 100, 257])
def test_streaming_root_matches_the_level_by_level_definition(n):
    assert merkle_root(_pairs(n)) == merkle_root_independent(_pairs(n))


def test_known_small_tree():
    (a_id, a), (b_id, b), (c_id, c) = _pairs(3)
    la = hashlib.sha256(f"{a_id}:{a}".encode()).hexdigest()
    lb = hashlib.sha256(f"{b_id}:{b}".encode()).hexdigest()
    lc = hashlib.sha256(f"{c_id}:{c}".encode()).hexdigest()
    ab = hashlib.sha256((la + lb).encode()).hexdigest()
    # The odd third leaf is promoted unchanged, then joined with the left pair.
    assert merkle_root(_pairs(3)) == hashlib.sha256((ab + lc).encode()).hexdigest()
    assert merkle_root([]) == EMPTY_ROOT


def test_changing_one_content_hash_changes_the_root():
    pairs = _pairs(10)
    tampered = list(pairs)
    tampered[4] = (tampered[4][0], "0" * 64)
    assert merkle_root(pairs) != merkle_root(tampered)
