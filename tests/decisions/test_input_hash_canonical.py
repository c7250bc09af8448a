"""The keyed input hash is defined over a row's canonical JSON (``canonical_row``): a person
(or an auditor) who holds the input recomputes the recorded hash from the values alone."""

from __future__ import annotations

import hashlib
import hmac
import json

from decisions.services.predictions import canonical_row, input_hash_key, input_hashes


def test_canonical_row_is_the_documented_json():
    row = {"b": 1.5, "a": "é"}
    assert canonical_row(row) == json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_row(row) == '{"a":"é","b":1.5}'


def test_a_hash_is_recomputed_from_the_values_and_the_key(settings):
    settings.DECISION_INPUT_HASH_KEY = "a-key-the-controller-holds"
    rows = [{"x0": 1.0, "x1": "a"}, {"x0": 2.0, "x1": "a"}, {"x1": "a", "x0": 1.0}]
    hashes = input_hashes(rows)
    assert hashes[0] == hashes[2] != hashes[1]  # key order does not matter, values do
    expected = hmac.new(b"a-key-the-controller-holds", b'{"x0":1.0,"x1":"a"}', hashlib.sha256).hexdigest()
    assert hashes[0] == expected
    assert input_hash_key() == b"a-key-the-controller-holds"
    settings.DECISION_INPUT_HASH_KEY = "another-key"
    assert input_hashes(rows)[0] != hashes[0]
