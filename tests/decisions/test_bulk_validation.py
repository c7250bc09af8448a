"""The predict service's whole-column validation gives exactly what provenance's row-by-row
record_validate gives (values and their types, in order) on random schemas and rows with
awkward names and values; where it declines (None), the row-by-row rules decide and name
the field."""

from __future__ import annotations

import random

import pytest

from decisions.services import predictions as P
from provenance.schema import RowError, record_validate

NAMES = ["x0", "b%s", "é\u00e9", 'q"uote', "back\\slash", "tab\t", "z", "A", "emoji😀", "ctl\x01"]


def _value(rng: random.Random, kind: str):
    r = rng.random()
    if kind == "float":
        return rng.choice([rng.uniform(-1e6, 1e6), rng.randint(-5, 5), 1e-300, 2.5e17,
                           float("nan") if r < 0.01 else 0.1, True if r < 0.01 else 1.0, -0.0])
    if kind == "int":
        return rng.choice([rng.randint(-10**20, 10**20), 3, False if r < 0.01 else 0, 1.0 if r < 0.01 else 7])
    if kind == "bool":
        return rng.choice([True, False, 1 if r < 0.01 else True])
    return rng.choice(["a", 'b"c', "ü%s", "" if r < 0.01 else "a", "zz" if r < 0.02 else "a", 5 if r < 0.005 else "a"])


@pytest.mark.parametrize("seed", range(4))
def test_the_column_validation_agrees_with_the_row_by_row_rules(seed):
    rng = random.Random(seed)
    fast_validations = 0
    for _ in range(400):
        names = rng.sample(NAMES, rng.randint(1, len(NAMES)))
        kinds = {n: rng.choice(["float", "int", "bool", "category"]) for n in names}
        spec = [{"name": n, "type": kinds[n],
                 **({"categories": ["a", 'b"c', "ü%s"]} if kinds[n] == "category" and rng.random() < 0.5 else {})}
                for n in names]
        rows = []
        for _ in range(rng.randint(1, 6)):
            row = {n: _value(rng, kinds[n]) for n in rng.sample(names, len(names))}
            if rng.random() < 0.01:
                row.pop(names[0])
            if rng.random() < 0.01:
                row["extra"] = 1
            rows.append(row)
        schema = {"features": spec, "label": P._NO_LABEL_SPEC}
        try:
            reference = [record_validate(r, 0.0, schema)[0] for r in rows]
        except (RowError, Exception):  # noqa: BLE001 - any refusal: the fast path must not accept
            reference = None
        bulk = P._rows_validate_bulk(rows, spec)
        if bulk is not None:
            fast_validations += 1
            assert reference is not None, (rows, spec)
            assert [list(b.items()) for b in bulk] == [list(r.items()) for r in reference]
            assert [[type(v) for v in b.values()] for b in bulk] == [[type(v) for v in r.values()] for r in reference]
    assert fast_validations > 100  # the fast path is really exercised
