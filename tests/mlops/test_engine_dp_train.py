"""DP-SGD engine: exact clipping against Opacus, the ε promise, determinism, refusals."""

from __future__ import annotations

import math

import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.grad_sample import GradSampleModule
from opacus.optimizers import DPOptimizer

from mlops.engine import dp_train
from mlops.engine.dp_train import (
    Trainer,
    clipped_grad_sum_linear,
    poisson_indices,
    predict_proba,
    supports_linear_clipping,
    train,
)
from mlops.engine.mia import per_example_losses
from mlops.engine.models import build_model
from mlops.engine.spec import TrainConfig
from tests.mlops.engine_data import linear_task


def dp_config(**overrides) -> TrainConfig:
    values = {"hidden_sizes": [32], "epochs": 3, "batch_size": 64, "learning_rate": 0.5, "target_epsilon": 2.0}
    values.update(overrides)
    return TrainConfig(**values)


def run(config: TrainConfig, n: int = 1200, **kwargs):
    X, y = linear_task(n=n + 300)
    return train(X_train=X[:n], y_train=y[:n], X_val=X[n:], y_val=y[n:], n_classes=2, config=config, **kwargs)


@pytest.mark.filterwarnings("ignore:Full backward hook")
@pytest.mark.parametrize(
    ("activation", "max_grad_norm"),
    [("relu", 0.05), ("tanh", 1.0), ("gelu", 0.3), ("relu", 100.0)],
)
def test_linear_clipping_equals_opacus_per_sample_clipping(activation, max_grad_norm):
    """Clipped per-example gradient sum by the outer-product path equals Opacus hooks mode."""
    torch.manual_seed(3)
    config = TrainConfig(hidden_sizes=[16, 8], activation=activation)
    model = build_model(n_features=6, n_classes=3, config=TrainConfig(**{**config.to_dict(), "task": "multiclass"}))
    X = torch.randn(40, 6) * torch.linspace(0.1, 5.0, 40).unsqueeze(1)  # a spread of norms: some clipped, some not
    y = torch.randint(0, 3, (40,))

    _, ours = clipped_grad_sum_linear(layers=list(model), X=X, y=y, max_grad_norm=max_grad_norm)

    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    torch.nn.functional.cross_entropy(gsm(X), y, reduction="sum").backward()
    grad_samples = [p.grad_sample for p in gsm.parameters()]
    norms = torch.stack([g.reshape(len(g), -1).norm(2, dim=-1) for g in grad_samples], dim=1).norm(2, dim=1)
    factor = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    expected = [torch.einsum("i,i...", factor, g) for g in grad_samples]

    if max_grad_norm < 1:
        assert (factor < 1).any()  # the case really exercises clipping
    assert len(ours) == len(expected)
    for mine, theirs in zip(ours, expected, strict=True):
        assert mine.shape == theirs.shape
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_linear_step_equals_opacus_dp_optimizer_step():
    """Clip, noise N(0, σ²C²) and division by the expected batch size, as DPOptimizer does."""
    torch.manual_seed(0)
    config = TrainConfig(hidden_sizes=[12], noise_multiplier=1.3, max_grad_norm=0.5, batch_size=20)
    X, y = linear_task(n=50, d=5)
    model_a = build_model(n_features=5, n_classes=2, config=config)
    model_b = build_model(n_features=5, n_classes=2, config=config)
    model_b.load_state_dict(model_a.state_dict())

    ours = Trainer(
        model=model_a, X=X, y=y, config=config, noise_multiplier=1.3, generator=torch.Generator().manual_seed(7)
    )
    assert ours.clipping == "linear"
    ours._step_linear(X[:23], y[:23])

    gsm = GradSampleModule(model_b, batch_first=True, loss_reduction="sum")
    optimizer = DPOptimizer(
        torch.optim.SGD(gsm.parameters(), lr=config.learning_rate),
        noise_multiplier=1.3,
        max_grad_norm=0.5,
        expected_batch_size=20,
        loss_reduction="mean",
        generator=torch.Generator().manual_seed(7),
    )
    torch.nn.functional.cross_entropy(gsm(X[:23]), y[:23], reduction="sum").backward()
    optimizer.step()

    for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_whole_run_matches_opacus_machinery_path():
    fast = run(dp_config(seed=5), n=600)
    reference = run(dp_config(seed=5), n=600, clipping="opacus")
    assert fast.clipping == "linear" and reference.clipping == "opacus"
    assert fast.epsilon == reference.epsilon
    for key, value in fast.state_dict.items():
        torch.testing.assert_close(value, reference.state_dict[key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("accountant", "opacus_class"), [("rdp", RDPAccountant), ("prv", PRVAccountant)])
def test_reported_epsilon_equals_opacus_accountant_and_stays_under_target(accountant, opacus_class):
    config = dp_config(target_epsilon=1.5, accountant=accountant, epochs=2)
    result = run(config)
    n = 1200
    expected_steps = 2 * (n // 64)
    assert result.steps == expected_steps
    assert result.sample_rate == 64 / n
    assert result.accountant_history == [[result.noise_multiplier, 64 / n, expected_steps]]

    opacus = opacus_class()
    for _ in range(expected_steps):
        opacus.step(noise_multiplier=result.noise_multiplier, sample_rate=64 / n)
    assert result.epsilon == opacus.get_epsilon(delta=config.target_delta)
    assert result.epsilon <= 1.5
    assert result.epsilon >= 1.5 - 0.02  # the noise is not wastefully large either
    assert result.epochs[-1].epsilon == result.epsilon
    assert result.epochs[0].epsilon < result.epochs[1].epsilon


def test_given_noise_multiplier_is_used_as_is():
    result = run(dp_config(target_epsilon=None, noise_multiplier=0.9))
    assert result.noise_multiplier == 0.9
    acct = RDPAccountant()
    acct.history = [(0.9, 64 / 1200, result.steps)]
    assert result.epsilon == acct.get_epsilon(delta=1e-5)


def test_training_is_deterministic_for_a_seed_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = run(dp_config(seed=11, dropout=0.2))
    assert torch.equal(torch.random.get_rng_state(), before)
    second = run(dp_config(seed=11, dropout=0.2))
    other = run(dp_config(seed=12, dropout=0.2))
    for key in first.state_dict:
        assert torch.equal(first.state_dict[key], second.state_dict[key])
    assert any(not torch.equal(first.state_dict[k], other.state_dict[k]) for k in first.state_dict)
    assert [e.loss for e in first.epochs] == [e.loss for e in second.epochs]


def test_dp_model_learns_a_separable_task():
    result = run(dp_config(target_epsilon=4.0, epochs=5))
    assert result.epochs[-1].val_accuracy > 0.8
    assert result.epochs[-1].train_accuracy > 0.8
    assert result.epochs[-1].loss < result.epochs[0].loss


def test_non_private_run_reports_infinite_epsilon():
    result = run(TrainConfig(hidden_sizes=[32], epochs=2, batch_size=64, private=False))
    assert math.isinf(result.epsilon)
    assert result.noise_multiplier is None
    assert result.accountant_history == []
    assert result.clipping == "none"
    assert all(math.isinf(e.epsilon) for e in result.epochs)


def test_progress_callback_and_stop_request():
    seen = []
    result = run(dp_config(epochs=4), on_epoch=seen.append, should_stop=lambda: len(seen) >= 2)
    assert [e.epoch for e in seen] == [1, 2]
    assert result.stopped
    assert result.epochs == seen
    full = run(dp_config(epochs=4))
    assert result.epsilon < full.epsilon
    assert result.steps == seen[-1].steps


def test_adam_and_multiclass_train():
    X, y = linear_task(n=900, n_classes=4, seed=2)
    config = dp_config(task="multiclass", optimizer="adam", learning_rate=0.01, target_epsilon=5.0)
    result = train(X_train=X[:700], y_train=y[:700], X_val=X[700:], y_val=y[700:], n_classes=4, config=config)
    assert result.epochs[-1].val_accuracy > 0.5
    assert result.state_dict["2.weight"].shape == (4, 32)


def test_init_state_continues_from_given_weights():
    first = run(dp_config(epochs=1))
    X, y = linear_task(n=1500)
    config = dp_config(epochs=1, learning_rate=1e-12)
    second = train(
        X_train=X[:1200],
        y_train=y[:1200],
        X_val=None,
        y_val=None,
        n_classes=2,
        config=config,
        init_state=first.state_dict,
    )
    for key, value in first.state_dict.items():
        torch.testing.assert_close(second.state_dict[key], value)
    with pytest.raises(ValueError, match="init_state"):
        train(
            X_train=X[:1200],
            y_train=y[:1200],
            X_val=None,
            y_val=None,
            n_classes=2,
            config=dp_config(hidden_sizes=[7]),
            init_state=first.state_dict,
        )


def test_poisson_batches_average_the_expected_batch_size():
    X, y = linear_task(n=2000)
    config = dp_config(batch_size=100)
    trainer = Trainer(
        model=build_model(n_features=10, n_classes=2, config=config),
        X=X,
        y=y,
        config=config,
        noise_multiplier=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    sizes = [len(trainer._sample()[0]) for _ in range(400)]
    assert 95 < sum(sizes) / len(sizes) < 105
    assert len(set(sizes)) > 10  # batch sizes vary: sampling is per example, not fixed-size


def test_predictions_and_losses():
    result = run(dp_config(epochs=1))
    model = build_model(n_features=10, n_classes=2, config=dp_config())
    model.load_state_dict(result.state_dict)
    X, y = linear_task(n=50, seed=9)
    proba = predict_proba(model=model, X=X)
    assert proba.shape == (50, 2)
    torch.testing.assert_close(proba.sum(1), torch.ones(50))
    losses = per_example_losses(models=[model], X=X, y=y)  # the audit's float64 losses
    assert losses.shape == (50,) and (losses >= 0).all()
    torch.testing.assert_close(
        torch.from_numpy(losses).float(), -torch.log(proba[torch.arange(50), y]), rtol=1e-4, atol=1e-5
    )


def test_built_models_take_the_fast_path():
    assert supports_linear_clipping(build_model(n_features=3, n_classes=2, config=TrainConfig(dropout=0.1)))
    assert not supports_linear_clipping(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4)))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"target_epsilon": 0.0}, "target_epsilon"),
        ({"target_epsilon": -1.0}, "target_epsilon"),
        ({"target_delta": 1 / 1200}, "target_delta"),
        ({"target_delta": 0.5}, "target_delta"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"max_grad_norm": -2.0}, "max_grad_norm"),
        ({"noise_multiplier": 1.0}, "target_epsilon"),  # both given
        ({"target_epsilon": None}, "target_epsilon"),  # neither given
        ({"hidden_sizes": [0]}, "hidden_sizes"),
        ({"hidden_sizes": [16, -3]}, "hidden_sizes"),
        ({"activation": "sigmoid"}, "activation"),
        ({"dropout": 1.0}, "dropout"),
        ({"batch_size": 5000}, "batch_size"),
        ({"epochs": 0}, "epochs"),
        ({"accountant": "gdp"}, "accountant"),
        ({"optimizer": "lbfgs"}, "optimizer"),
    ],
)
def test_bad_configuration_is_refused_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        run(dp_config(**overrides))


def test_single_class_and_bad_labels_are_refused():
    X, _ = linear_task(n=300)
    with pytest.raises(ValueError, match="^y_train: .*single class"):
        train(
            X_train=X,
            y_train=torch.zeros(300, dtype=torch.long),
            X_val=None,
            y_val=None,
            n_classes=2,
            config=dp_config(),
        )
    with pytest.raises(ValueError, match="^task: binary"):
        train(X_train=X, y_train=torch.arange(300) % 3, X_val=None, y_val=None, n_classes=3, config=dp_config())
    with pytest.raises(ValueError, match="^y_train: labels"):
        train(X_train=X, y_train=torch.arange(300) % 3, X_val=None, y_val=None, n_classes=2, config=dp_config())
    bad = X.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="^X_train: "):
        train(X_train=bad, y_train=torch.arange(300) % 2, X_val=None, y_val=None, n_classes=2, config=dp_config())


def test_config_round_trips_through_dict_and_refuses_unknown_keys():
    config = dp_config(hidden_sizes=[8, 4], accountant="prv")
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="^learnin_rate: unknown"):
        TrainConfig.from_dict({"learnin_rate": 0.1})


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_an_empty_poisson_batch_is_a_noise_only_step_in_both_paths():
    """Poisson sampling can draw no example; the step still adds noise (as Opacus does)."""
    X, y = linear_task(n=50, d=5)
    config = TrainConfig(hidden_sizes=[8], batch_size=10, noise_multiplier=1.0)
    weights = {}
    for clipping in ("linear", "opacus"):
        torch.manual_seed(0)
        model = build_model(n_features=5, n_classes=2, config=config)
        before = model[0].weight.detach().clone()
        trainer = Trainer(
            model=model,
            X=X,
            y=y,
            config=config,
            noise_multiplier=1.0,
            generator=torch.Generator().manual_seed(4),
            clipping=clipping,
        )
        empty = torch.zeros(0, dtype=torch.long)
        step = trainer._step_linear if clipping == "linear" else trainer._step_opacus
        assert float(step(X[empty], y[empty], empty)) == 0.0
        weights[clipping] = model[0].weight.detach().clone()
        assert not torch.equal(weights[clipping], before)
    torch.testing.assert_close(weights["linear"], weights["opacus"])


def test_poisson_indices_are_a_bernoulli_sample_of_every_row():
    """Each row is taken independently with probability q: per-row rates at q, sizes with
    Binomial(n, q)'s mean and variance, sorted distinct indices in range, seeded draws."""
    n, q, draws = 400, 0.05, 20_000
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(n)
    sizes = []
    for _ in range(draws):
        idx = poisson_indices(n=n, sample_rate=q, generator=generator)
        assert idx.dtype == torch.int64
        assert bool((idx[1:] > idx[:-1]).all()) and (len(idx) == 0 or (int(idx[0]) >= 0 and int(idx[-1]) < n))
        counts[idx] += 1
        sizes.append(len(idx))
    rates = counts / draws
    sd = math.sqrt(q * (1 - q) / draws)
    assert abs(float(rates.mean()) - q) < 4 * sd / math.sqrt(n)
    assert float((rates - q).abs().max()) < 5 * sd  # no row favoured: not the first, not the last
    assert abs(float(rates[0]) - q) < 4 * sd and abs(float(rates[-1]) - q) < 4 * sd
    sizes_t = torch.tensor(sizes, dtype=torch.float64)
    assert abs(float(sizes_t.mean()) - n * q) < 4 * math.sqrt(n * q * (1 - q) / draws)
    assert abs(float(sizes_t.var()) / (n * q * (1 - q)) - 1) < 0.05
    # Pairs of rows are independent: rows 0 and 1 together about q² of the time.
    again = torch.Generator().manual_seed(1)
    both = sum(
        1 for _ in range(draws) if {0, 1} <= set(poisson_indices(n=n, sample_rate=q, generator=again)[:2].tolist())
    )
    assert abs(both / draws - q * q) < 4 * math.sqrt(q * q / draws)
    first = poisson_indices(n=n, sample_rate=q, generator=torch.Generator().manual_seed(9))
    assert torch.equal(first, poisson_indices(n=n, sample_rate=q, generator=torch.Generator().manual_seed(9)))
    assert torch.equal(poisson_indices(n=7, sample_rate=1.0, generator=generator), torch.arange(7))


def test_poisson_indices_drawing_a_second_round_take_the_same_rows(monkeypatch):
    """When the first round of uniforms ends before the last row, the next round goes on
    from where it stopped: the same rows as one long round from the same generator state."""
    n, q = 5000, 0.02
    expected = [poisson_indices(n=n, sample_rate=q, generator=torch.Generator().manual_seed(s)) for s in range(20)]
    monkeypatch.setattr(dp_train, "_POISSON_MARGIN_SD", -4.0)  # every first round falls short
    short = [poisson_indices(n=n, sample_rate=q, generator=torch.Generator().manual_seed(s)) for s in range(20)]
    for a, b in zip(expected, short, strict=True):
        assert torch.equal(a, b)


def test_epoch_training_figures_are_those_of_the_sampled_batches():
    """loss and train_accuracy are the mean loss and the accuracy over the rows each step
    sampled, as the model stood at that step: with a step size too small to move any weight,
    exactly the initial model's figures on the rows the sampler drew."""
    X, y = linear_task(n=600)
    config = TrainConfig(hidden_sizes=[8], epochs=1, batch_size=50, learning_rate=1e-30, private=False, seed=3)
    result = train(X_train=X, y_train=y, X_val=None, y_val=None, n_classes=2, config=config)

    torch.manual_seed(3)
    initial = build_model(n_features=10, n_classes=2, config=config)
    for key, value in initial.state_dict().items():
        assert torch.equal(value, result.state_dict[key])  # the steps really moved nothing
    generator = torch.Generator().manual_seed(3)  # train() seeds its sampler with config.seed
    rows = torch.cat([poisson_indices(n=600, sample_rate=50 / 600, generator=generator) for _ in range(12)])
    with torch.no_grad():
        logits = initial(X[rows])
    report = result.epochs[0]
    assert report.train_accuracy == float((logits.argmax(1) == y[rows]).double().mean())
    assert report.loss == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y[rows])), rel=1e-6)


def test_only_models_with_something_to_fix_are_copied_by_the_validator():
    built = build_model(n_features=4, n_classes=2, config=TrainConfig(hidden_sizes=[8], dropout=0.1))
    assert dp_train._dp_compatible(built) is built
    with_norm = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    fixed = dp_train._dp_compatible(with_norm)
    assert fixed is not with_norm and not any(isinstance(m, torch.nn.BatchNorm1d) for m in fixed.modules())
