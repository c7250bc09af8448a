"""SISA: assignment by person, slice checkpoints, exact resumption, per-shard accounting."""

from __future__ import annotations

import numpy
import pytest
import torch
from opacus.accountants import RDPAccountant

from mlops.engine.dp_train import load_model, predict_proba
from mlops.engine.sisa import assign_shards, ensemble_epsilon, ensemble_predict_proba, stage_epochs, train_shard
from mlops.engine.spec import TrainConfig
from tests.mlops.engine_data import linear_task

SLICES = 3


def shard_data(n_subjects: int = 240, seed: int = 0):
    """Two records per subject; rows are placed by their subject's assignment."""
    X, y = linear_task(n=2 * n_subjects, seed=seed)
    subject_of_row = numpy.repeat(numpy.arange(1000, 1000 + n_subjects), 2)
    assignment = assign_shards(subject_ids=subject_of_row.tolist(), shards=1, slices=SLICES, seed=7)
    slice_of_row = numpy.array([assignment[int(s)][1] for s in subject_of_row])
    return X, y, subject_of_row, slice_of_row


def config(**overrides) -> TrainConfig:
    values = {"hidden_sizes": [16], "epochs": 4, "batch_size": 32, "learning_rate": 0.3, "target_epsilon": 3.0}
    values.update(overrides)
    return TrainConfig(**values)


def test_assignment_is_deterministic_by_subject_and_stable_under_erasure():
    ids = list(range(1, 2001))
    first = assign_shards(subject_ids=ids, shards=5, slices=4, seed=3)
    assert first == assign_shards(subject_ids=list(reversed(ids)), shards=5, slices=4, seed=3)
    # Erasing people does not move anyone else.
    survivors = assign_shards(subject_ids=ids[::3], shards=5, slices=4, seed=3)
    assert all(survivors[s] == first[s] for s in ids[::3])
    assert first != assign_shards(subject_ids=ids, shards=5, slices=4, seed=4)
    counts = numpy.zeros((5, 4))
    for shard, slice_ in first.values():
        counts[shard, slice_] += 1
    assert counts.min() > 0.6 * counts.mean()  # hashing spreads people evenly
    with pytest.raises(ValueError, match="^shards"):
        assign_shards(subject_ids=ids, shards=0, slices=4, seed=3)


def test_a_checkpoint_after_every_slice_and_per_shard_epsilon():
    X, y, _, slice_of_row = shard_data()
    result = train_shard(X=X, y=y, slice_of_row=slice_of_row, slices=SLICES, n_classes=2, config=config(), shard=0)
    assert len(result.checkpoints) == SLICES
    assert torch.equal(result.checkpoints[-1]["0.weight"], result.result.state_dict["0.weight"])
    assert not torch.equal(result.checkpoints[0]["0.weight"], result.checkpoints[1]["0.weight"])
    # One stage per slice, each on the rows of slices 0..r, composed into one history.
    history = result.result.accountant_history
    assert len(history) == SLICES
    sizes = [int((slice_of_row <= r).sum()) for r in range(SLICES)]
    assert [h[1] for h in history] == [32 / n for n in sizes]
    epochs = stage_epochs(epochs=4, slices=SLICES)
    assert [h[2] for h in history] == [epochs * (n // 32) for n in sizes]
    opacus = RDPAccountant()
    opacus.history = [tuple(h) for h in history]
    assert result.result.epsilon == opacus.get_epsilon(delta=1e-5)
    assert 3.0 - 0.02 <= result.result.epsilon <= 3.0
    assert result.result.steps == sum(h[2] for h in history)
    assert [e.epoch for e in result.result.epochs] == list(range(1, SLICES * epochs + 1))


def test_resuming_from_checkpoint_reproduces_training_from_scratch():
    X, y, _, slice_of_row = shard_data(n_subjects=150)
    scratch = train_shard(X=X, y=y, slice_of_row=slice_of_row, slices=SLICES, n_classes=2, config=config(), shard=1)
    resumed = train_shard(
        X=X,
        y=y,
        slice_of_row=slice_of_row,
        slices=SLICES,
        n_classes=2,
        config=config(),
        shard=1,
        start_slice=2,
        init_state=scratch.checkpoints[1],
    )
    assert resumed.start_slice == 2 and len(resumed.checkpoints) == 1
    for key, value in scratch.result.state_dict.items():
        assert torch.equal(resumed.result.state_dict[key], value)
    assert resumed.result.accountant_history == scratch.result.accountant_history
    assert resumed.result.epsilon == scratch.result.epsilon


def test_unlearning_from_the_slice_checkpoint_equals_retraining_without_the_erased():
    X, y, subject_of_row, slice_of_row = shard_data(n_subjects=150)
    original = train_shard(X=X, y=y, slice_of_row=slice_of_row, slices=SLICES, n_classes=2, config=config(), shard=2)
    # Unlearning keeps the run's σ: the checkpoints were trained with it.
    fixed = config(target_epsilon=None, noise_multiplier=original.result.noise_multiplier)

    # Erase three people who fell in slice 1: only stages 1.. need retraining.
    erased = numpy.unique(subject_of_row[slice_of_row == 1])[:3]
    keep = ~numpy.isin(subject_of_row, erased)
    Xk, yk, sk = X[torch.from_numpy(keep)], y[torch.from_numpy(keep)], slice_of_row[keep]

    scratch = train_shard(X=Xk, y=yk, slice_of_row=sk, slices=SLICES, n_classes=2, config=fixed, shard=2)
    resumed = train_shard(
        X=Xk,
        y=yk,
        slice_of_row=sk,
        slices=SLICES,
        n_classes=2,
        config=fixed,
        shard=2,
        start_slice=1,
        init_state=original.checkpoints[0],
    )
    # Slice 0 did not change, so its checkpoint is the one training from scratch gives.
    for key in original.checkpoints[0]:
        assert torch.equal(scratch.checkpoints[0][key], original.checkpoints[0][key])
    for key, value in scratch.result.state_dict.items():
        assert torch.equal(resumed.result.state_dict[key], value)
    for k in range(SLICES - 1):
        for key in scratch.checkpoints[k + 1]:
            assert torch.equal(resumed.checkpoints[k][key], scratch.checkpoints[k + 1][key])
    # The erased people's records no longer shaped the model.
    assert not torch.equal(resumed.result.state_dict["0.weight"], original.result.state_dict["0.weight"])
    # ε still covers every stage, including the one not re-run.
    assert resumed.result.accountant_history == scratch.result.accountant_history
    assert resumed.result.epsilon == scratch.result.epsilon


def test_ensemble_predicts_the_mean_of_shards_and_takes_the_worst_epsilon():
    X, y, _, slice_of_row = shard_data()
    models, epsilons = [], []
    for shard in range(2):
        rows = torch.arange(len(X)) % 2 == shard
        result = train_shard(
            X=X[rows],
            y=y[rows],
            slice_of_row=slice_of_row[rows.numpy()],
            slices=SLICES,
            n_classes=2,
            config=config(target_epsilon=2.0 + shard),
            shard=shard,
        )
        models.append(load_model(state_dict=result.result.state_dict, n_features=10, n_classes=2, config=config()))
        epsilons.append(result.result.epsilon)
    proba = ensemble_predict_proba(models=models, X=X[:20])
    expected = (predict_proba(model=models[0], X=X[:20]) + predict_proba(model=models[1], X=X[:20])) / 2
    torch.testing.assert_close(proba, expected)
    assert ensemble_epsilon(shard_epsilons=epsilons) == max(epsilons)
    assert max(epsilons) <= 3.0


def test_bad_sisa_input_is_refused():
    X, y, _, slice_of_row = shard_data(n_subjects=60)
    with pytest.raises(ValueError, match="^slice_of_row"):
        train_shard(X=X, y=y, slice_of_row=slice_of_row[:-1], slices=SLICES, n_classes=2, config=config(), shard=0)
    with pytest.raises(ValueError, match="^slice_of_row"):
        train_shard(X=X, y=y, slice_of_row=slice_of_row + 5, slices=SLICES, n_classes=2, config=config(), shard=0)
    with pytest.raises(ValueError, match="^init_state"):
        train_shard(
            X=X, y=y, slice_of_row=slice_of_row, slices=SLICES, n_classes=2, config=config(), shard=0, start_slice=1
        )


def test_a_slice_with_one_class_still_trains_but_a_one_class_shard_is_refused():
    X, y, _, slice_of_row = shard_data(n_subjects=90)
    y = y.clone()
    y[torch.from_numpy(slice_of_row == 0)] = 1  # the first slice holds only class 1
    result = train_shard(
        X=X,
        y=y,
        slice_of_row=slice_of_row,
        slices=SLICES,
        n_classes=2,
        config=config(noise_multiplier=1.0, target_epsilon=None),
        shard=0,
    )
    assert len(result.checkpoints) == SLICES
    with pytest.raises(ValueError, match="^y: .*single class"):
        train_shard(
            X=X,
            y=torch.ones_like(y),
            slice_of_row=slice_of_row,
            slices=SLICES,
            n_classes=2,
            config=config(),
            shard=0,
        )
