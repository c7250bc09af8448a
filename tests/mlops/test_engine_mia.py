"""Membership-inference audit: the metrics are right, and DP visibly blunts the attack."""

from __future__ import annotations

import numpy
import pytest

from mlops.engine.dp_train import load_model, train
from mlops.engine.mia import MAX_ROC_POINTS, loss_threshold_attack, per_example_losses
from mlops.engine.spec import TrainConfig
from tests.mlops.engine_data import noisy_task


def brute_force_auc(members, nonmembers):
    wins = sum((m < n) + 0.5 * (m == n) for m in members for n in nonmembers)
    return wins / (len(members) * len(nonmembers))


def test_perfectly_separated_losses_give_full_advantage():
    result = loss_threshold_attack(member_losses=numpy.array([0.1, 0.2, 0.3]), nonmember_losses=numpy.array([1.0, 2.0]))
    assert result.auc == 1.0
    assert result.advantage == 1.0
    # Two non-members cannot measure a 1% or 0.1% FPR: not reported rather than a made-up 1.0.
    assert result.tpr_at_1pct_fpr is None and result.tpr_at_01pct_fpr is None
    assert (result.n_members, result.n_nonmembers) == (3, 2)
    assert result.roc[0] == [0.0, 0.0] and result.roc[-1] == [1.0, 1.0]
    result = loss_threshold_attack(member_losses=numpy.linspace(0.1, 0.3, 10), nonmember_losses=numpy.linspace(1, 2, 1000))
    assert result.tpr_at_1pct_fpr == 1.0 and result.tpr_at_01pct_fpr == 1.0
    assert result.tpr_at_01pct_fpr_low == result.tpr_at_01pct_fpr_high == 1.0


def test_identical_losses_give_no_advantage():
    losses = numpy.full(100, 0.7)
    result = loss_threshold_attack(member_losses=losses, nonmember_losses=losses.copy())
    assert result.auc == 0.5
    assert result.advantage == 0.0
    assert result.tpr_at_1pct_fpr == 0.0
    assert result.auc_low == result.auc_high == 0.5  # every resample is all ties


def test_metrics_match_brute_force_with_ties():
    rng = numpy.random.default_rng(0)
    members = rng.integers(0, 8, 60) / 4.0  # many ties on purpose
    nonmembers = rng.integers(2, 12, 45) / 4.0
    result = loss_threshold_attack(member_losses=members, nonmember_losses=nonmembers)
    assert result.auc == pytest.approx(brute_force_auc(members, nonmembers), abs=1e-12)

    best = 0.0
    for threshold in numpy.unique(numpy.concatenate([members, nonmembers])):
        tpr = (members <= threshold).mean()
        fpr = (nonmembers <= threshold).mean()
        best = max(best, tpr - fpr)
    assert result.advantage == pytest.approx(best)


def test_low_fpr_tpr_is_read_at_the_right_threshold():
    # 1,000 non-members: 1% FPR allows 10 false positives, 0.1% allows 1.
    nonmembers = numpy.linspace(1.0, 2.0, 1000)
    members = numpy.concatenate([numpy.full(30, 0.5), numpy.full(70, 1.5)])
    result = loss_threshold_attack(member_losses=members, nonmember_losses=nonmembers)
    assert result.tpr_at_01pct_fpr == pytest.approx(0.30)
    assert result.tpr_at_1pct_fpr == pytest.approx(0.30)
    members = numpy.concatenate([numpy.full(30, 0.5), numpy.full(20, 1.005), numpy.full(50, 1.9)])
    result = loss_threshold_attack(member_losses=members, nonmember_losses=nonmembers)
    assert result.tpr_at_01pct_fpr == pytest.approx(0.30)
    assert result.tpr_at_1pct_fpr == pytest.approx(0.50)


def test_roc_is_thinned_for_plotting_and_monotone():
    rng = numpy.random.default_rng(1)
    result = loss_threshold_attack(
        member_losses=rng.exponential(1.0, 3000), nonmember_losses=rng.exponential(1.3, 3000)
    )
    assert len(result.roc) <= MAX_ROC_POINTS
    fprs = [p[0] for p in result.roc]
    tprs = [p[1] for p in result.roc]
    assert fprs == sorted(fprs) and tprs == sorted(tprs)
    assert result.roc[0] == [0.0, 0.0] and result.roc[-1] == [1.0, 1.0]


def test_empty_sides_are_refused():
    with pytest.raises(ValueError, match="^member_losses"):
        loss_threshold_attack(member_losses=numpy.array([]), nonmember_losses=numpy.array([1.0]))
    with pytest.raises(ValueError, match="^nonmember_losses"):
        loss_threshold_attack(member_losses=numpy.array([1.0]), nonmember_losses=numpy.array([]))


def attack(config: TrainConfig):
    X, y = noisy_task(n=2000, d=20, label_noise=0.2, seed=0)
    members, nonmembers = slice(0, 1000), slice(1000, 2000)
    result = train(
        X_train=X[members], y_train=y[members], X_val=X[nonmembers], y_val=y[nonmembers], n_classes=2, config=config
    )
    model = load_model(state_dict=result.state_dict, n_features=20, n_classes=2, config=config)
    audit = loss_threshold_attack(
        member_losses=per_example_losses(models=[model], X=X[members], y=y[members]),
        nonmember_losses=per_example_losses(models=[model], X=X[nonmembers], y=y[nonmembers]),
    )
    return result, audit


def test_overfitting_model_leaks_membership_and_dp_model_does_not():
    common = {"hidden_sizes": [256, 256], "optimizer": "adam", "learning_rate": 3e-3, "epochs": 30, "batch_size": 128}
    plain, plain_audit = attack(TrainConfig(**common, private=False, seed=1))
    private, private_audit = attack(TrainConfig(**common, target_epsilon=1.0, target_delta=1e-5, seed=1))

    assert plain.epochs[-1].train_accuracy > 0.95  # it memorised the noisy labels
    assert private.epsilon <= 1.0
    assert plain_audit.n_members == private_audit.n_members == 1000
    assert plain_audit.auc > 0.65
    assert private_audit.auc < 0.56
    assert plain_audit.auc - private_audit.auc > 0.1
    assert plain_audit.advantage > 2 * private_audit.advantage
