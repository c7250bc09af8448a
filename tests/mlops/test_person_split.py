"""The train / validation / hold-out split is a keyed hash of the person, stable across erasures."""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pytest
from django.conf import settings
from django.test import override_settings

from mlops import data, services
from mlops.models import RunStatus, TrainingRun
from tests.mlops.factories import make_snapshot

FRACTIONS = {"validation_split": 0.1, "holdout_fraction": 0.2}


def _split(ids, seed=0, **fractions):
    return data.subject_split(subject_ids=np.asarray(ids, dtype=np.int64), seed=seed, **(fractions or FRACTIONS))


def test_erasing_people_moves_no_one_else():
    ids = np.arange(1, 1001, dtype=np.int64)
    before = dict(zip(ids.tolist(), _split(ids, seed=3).tolist(), strict=True))
    erased = np.random.default_rng(0).choice(ids, size=50, replace=False)
    remaining = np.setdiff1d(ids, erased)

    after = _split(remaining, seed=3)

    assert after.tolist() == [before[i] for i in remaining.tolist()]
    # Every split is represented, so the comparison above is not vacuous.
    assert set(after.tolist()) == {data.SPLIT_TRAIN, data.SPLIT_VALIDATION, data.SPLIT_HOLDOUT}


def test_a_person_keeps_their_split_whatever_their_rows_order_or_count():
    ids = np.arange(1, 501, dtype=np.int64)
    per_person = dict(zip(ids.tolist(), _split(ids).tolist(), strict=True))
    rows = np.random.default_rng(1).permutation(np.repeat(ids, 3))

    assert _split(rows).tolist() == [per_person[i] for i in rows.tolist()]


def test_different_seeds_give_different_splits():
    ids = np.arange(1, 2001)
    a, b = _split(ids, seed=0), _split(ids, seed=1)
    assert (a != b).mean() > 0.2
    assert np.array_equal(a, _split(ids, seed=0))  # and the same seed the same split


def test_proportions_are_close_to_the_requested_fractions():
    split = _split(np.arange(1, 20_001), seed=5, validation_split=0.15, holdout_fraction=0.25)
    shares = np.bincount(split, minlength=3) / len(split)
    assert shares[data.SPLIT_HOLDOUT] == pytest.approx(0.25, abs=0.02)
    assert shares[data.SPLIT_VALIDATION] == pytest.approx(0.15, abs=0.02)
    assert shares[data.SPLIT_TRAIN] == pytest.approx(0.60, abs=0.02)


def test_no_hold_out_and_no_validation_trains_everyone():
    assert (_split(np.arange(1, 1001), validation_split=0.0, holdout_fraction=0.0) == data.SPLIT_TRAIN).all()


@override_settings(PERSON_SPLIT_KEY="")
def test_the_key_matters():
    ids = np.arange(1, 2001)
    with override_settings(PSEUDONYMISATION_KEY="one-pseudonymisation-key"):
        a = _split(ids)
    with override_settings(PSEUDONYMISATION_KEY="another-pseudonymisation-key"):
        b = _split(ids)
    assert (a != b).mean() > 0.2
    with override_settings(PSEUDONYMISATION_KEY="one-pseudonymisation-key", PERSON_SPLIT_KEY="an-explicit-split-key"):
        explicit = _split(ids)
    assert (a != explicit).mean() > 0.2


@override_settings(PERSON_SPLIT_KEY="")
def test_the_draw_is_the_documented_formula():
    key = hmac.new(settings.PSEUDONYMISATION_KEY.encode(), b"privacy-ledger/person-split/v1", hashlib.sha256).digest()
    ids = [1, 17, 123_456_789]
    expected = [
        int.from_bytes(hmac.new(key, f"9:{i}".encode(), hashlib.sha256).digest()[:8], "big") / 2**64 for i in ids
    ]
    assert data.person_draws(subject_ids=ids, seed=9).tolist() == expected


def test_the_rule_describes_the_thresholds():
    rule = data.person_split_rule(validation_split=0.1, holdout_fraction=0.2)
    assert rule == {
        "rule": "hmac-sha256(person-split key, '<seed>:<subject id>')[:8] / 2^64",
        "version": 1,
        "holdout_below": 0.2,
        "validation_below": pytest.approx(0.3),
    }


@pytest.mark.django_db
def test_a_queued_run_records_the_split_rule_and_counts_by_it():
    snapshot = make_snapshot(n=300, d=5)
    run = services.training_run_queue(
        snapshot=snapshot, epochs=1, batch_size=32, noise_multiplier=1.0, seed=4,
        validation_split=0.1, holdout_fraction=0.25, enqueue=False,
    )
    stored = TrainingRun.objects.get(pk=run.pk)

    assert stored.encoding["split"] == data.person_split_rule(validation_split=0.1, holdout_fraction=0.25)
    labels = data.snapshot_labels(snapshot_id=snapshot.pk)
    split = data.subject_split(subject_ids=labels.subject_ids, seed=4, validation_split=0.1, holdout_fraction=0.25)
    assert (stored.n_train, stored.n_validation, stored.n_holdout) == tuple(
        int((split == s).sum()) for s in (data.SPLIT_TRAIN, data.SPLIT_VALIDATION, data.SPLIT_HOLDOUT)
    )


@pytest.mark.django_db
def test_a_finished_run_keeps_the_split_rule():
    snapshot = make_snapshot(n=200, d=5, seed=2)
    run = services.training_run_queue(snapshot=snapshot, epochs=1, batch_size=32, noise_multiplier=1.0, enqueue=False)

    finished = services.training_run_execute(run_id=run.pk)

    assert finished.status == RunStatus.SUCCEEDED, finished.error
    stored = TrainingRun.objects.get(pk=run.pk)
    assert stored.encoding["features"] and stored.encoding["classes"]
    assert stored.encoding["split"] == data.person_split_rule(validation_split=0.1, holdout_fraction=0.2)
