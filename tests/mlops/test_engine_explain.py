"""mlops.engine.explain without Django (issue 19): Integrated Gradients' completeness
within Captum's convergence delta, the per-feature grouping of one-hot columns, the
Shapley methods' feature mask, a counterfactual that really flips the class within the
schema's bounds, and what each output policy lets through."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mlops.engine import explain

ENCODING = {
    "features": [
        {"name": "age", "type": "int", "min": 18, "max": 90},
        {"name": "score", "type": "float"},
        {"name": "region", "type": "category", "categories": ["north", "south", "east"]},
        {"name": "income", "type": "float", "min": 0.0, "max": 100000.0},
    ],
    "classes": ["deny", "grant"],
}
WIDTH = 6


def _model(seed: int = 0, n_classes: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(WIDTH, 64), nn.ReLU(), nn.Linear(64, n_classes))


def _rows(n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.random((n, WIDTH)).astype(np.float32)
    X[:, 1] = rng.normal(size=n)
    X[:, 2:5] = np.eye(3, dtype=np.float32)[rng.integers(0, 3, n)]
    return X


def _steep() -> explain.Ensemble:
    """A model whose decision turns on income (column 5) at 0.6 of its range."""
    model = nn.Sequential(nn.Linear(WIDTH, 2))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.zero_()
        model[0].weight[1, 5] = 20.0
        model[0].bias[1] = -12.0
    return explain.Ensemble([model])


def test_the_baseline_is_the_schemas_and_the_columns_are_grouped_per_feature():
    assert explain.schema_baseline(ENCODING).tolist() == pytest.approx([0.5, 0.0, 1 / 3, 1 / 3, 1 / 3, 0.5])
    assert explain.feature_columns(ENCODING) == [
        ("age", slice(0, 1)), ("score", slice(1, 2)), ("region", slice(2, 5)), ("income", slice(5, 6))]
    assert "never by the data" in explain.BASELINE_RULE


@pytest.mark.parametrize("shards", [1, 3])
def test_integrated_gradients_sum_to_the_output_minus_the_baseline_within_the_convergence_delta(shards):
    ensemble = explain.Ensemble([_model(seed=s) for s in range(shards)])
    X = _rows(64)
    attr = explain.explain(ensemble, X, encoding=ENCODING, n_steps=50)
    assert attr.method == "integrated_gradients" and attr.features == ["age", "score", "region", "income"]
    assert attr.values.shape == (64, 4) and attr.values.dtype == np.float64
    gap = attr.values.sum(axis=1) - (attr.output - attr.baseline_output)
    assert np.all(np.abs(gap) <= np.abs(attr.convergence_delta) + 1e-4)
    # The delta is Captum's completeness error itself, not merely a bound.
    assert np.abs(gap - attr.convergence_delta).max() < 1e-5
    # Explained by default: the predicted class, at the probability predict_proba gives it.
    P = explain.predict_proba(ensemble, X)
    assert attr.targets.tolist() == P.argmax(axis=1).tolist()
    assert attr.output == pytest.approx(P[np.arange(64), attr.targets])
    assert attr.baseline_output == pytest.approx(
        explain.predict_proba(ensemble, explain.schema_baseline(ENCODING))[0][attr.targets])


def test_a_category_is_one_feature_its_one_hot_columns_summed_or_moved_together():
    ensemble = explain.Ensemble([_model()])
    X = _rows(4)
    from captum.attr import IntegratedGradients

    raw = IntegratedGradients(ensemble).attribute(
        torch.from_numpy(X), baselines=torch.from_numpy(explain.schema_baseline(ENCODING))[None, :].expand(4, -1),
        target=torch.from_numpy(explain.predict_proba(ensemble, X).argmax(axis=1)), n_steps=50,
        method="gausslegendre").double().numpy()
    attr = explain.explain(ensemble, X, encoding=ENCODING)
    assert attr.values[:, 2] == pytest.approx(raw[:, 2:5].sum(axis=1), abs=1e-6)
    assert attr.values[:, 3] == pytest.approx(raw[:, 5], abs=1e-6)

    for method in ("shapley_value_sampling", "kernel_shap"):
        shap = explain.explain(ensemble, X, encoding=ENCODING, method=method, n_samples=200, seed=3)
        assert shap.values.shape == (4, 4) and shap.convergence_delta is None
        # Shapley values are efficient: they sum to output − baseline output (KernelSHAP
        # through the end-point constraint Captum weights by 10^6).
        assert shap.values.sum(axis=1) == pytest.approx(shap.output - shap.baseline_output, abs=1e-3)
        again = explain.explain(ensemble, X, encoding=ENCODING, method=method, n_samples=200, seed=3)
        assert np.array_equal(shap.values, again.values)  # seeded
    # Moving the region's three columns together or summing IG's: the same ranking of the
    # features that matter, on this smooth model.
    assert np.corrcoef(shap.values.ravel(), attr.values.ravel())[0, 1] > 0.8


def test_top_contributions_name_features_with_direction_by_size():
    attr = explain.Attributions(
        method="integrated_gradients", features=["a", "b", "c"], values=np.array([[0.1, -0.3, 0.0]]),
        targets=np.array([1]), output=np.array([0.6]), baseline_output=np.array([0.8]),
        convergence_delta=np.array([0.0]),
    )
    assert explain.top_contributions(attr, 0, k=2) == [
        {"feature": "b", "contribution": -0.3, "direction": "lowers"},
        {"feature": "a", "contribution": 0.1, "direction": "raises"},
    ]


def test_the_counterfactual_flips_the_class_when_applied_and_stays_in_bounds():
    ensemble = _steep()
    x = _rows(1)[0]
    x[5] = 0.3  # income 30,000: denied (the boundary is at 60,000)
    assert explain.predict_proba(ensemble, x)[0].argmax() == 0
    hint = explain.counterfactual_hint(ensemble, x, encoding=ENCODING)
    assert hint["feature"] == "income" and hint["new_label_index"] == 1
    assert hint["from"] == pytest.approx(30000.0, rel=1e-5)
    assert 60000.0 <= hint["to"] <= 60000.0 + 1000.0  # the smallest change, to within the search's resolution
    applied = x.copy()
    applied[5] = hint["to"] / 100000.0
    assert explain.predict_proba(ensemble, applied)[0].argmax() == 1
    # Only actionable features move; one that cannot flip it gives no hint.
    assert explain.counterfactual_hint(ensemble, x, encoding=ENCODING, actionable=["age", "region"]) is None
    with pytest.raises(ValueError, match="actionable"):
        explain.counterfactual_hint(ensemble, x, encoding=ENCODING, actionable=["salary"])


def test_a_counterfactual_on_an_int_feature_is_a_whole_number_and_a_category_switches():
    model = nn.Sequential(nn.Linear(WIDTH, 2))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.zero_()
        model[0].weight[1, 0] = 10.0  # age
        model[0].bias[1] = -5.3  # grant above about 18 + 0.53 × 72 = 56.2 years
        model[0].weight[1, 3] = -20.0  # living in the south denies
    ensemble = explain.Ensemble([model])
    x = _rows(1)[0]
    x[0], x[2:5] = (40 - 18) / 72, [1.0, 0.0, 0.0]
    hint = explain.counterfactual_hint(ensemble, x, encoding=ENCODING, actionable=["age"])
    assert hint["feature"] == "age" and hint["to"] == 57.0 and hint["from"] == pytest.approx(40.0)
    x[0] = 70 / 72  # 88 years: granted, unless in the south
    hint = explain.counterfactual_hint(ensemble, x, encoding=ENCODING, actionable=["region"])
    assert hint == {"feature": "region", "from": "north", "to": "south", "new_label_index": 0}


def test_global_attributions_rank_the_feature_the_model_reads():
    ensemble = _steep()
    rows = explain.global_attributions(ensemble, _rows(200), encoding=ENCODING)
    assert [r["feature"] for r in rows][0] == "income"
    assert rows[0]["mean_abs"] > 0 and all(r["mean_abs"] == 0 for r in rows[1:])
    assert explain.attribution_norms(ensemble, _rows(5), np.zeros(5, dtype=np.int64), encoding=ENCODING).shape == (5,)


def test_present_output_lets_through_only_what_the_policy_allows():
    P = np.array([[0.123456, 0.876544], [0.95, 0.05], [0.45, 0.55]])
    classes = ["deny", "grant"]
    full = explain.present_output(P, classes, kind="full_probabilities")
    assert full[0] == {"label": "grant", "probabilities": {"deny": 0.123456, "grant": 0.876544}}
    rounded = explain.present_output(P, classes, kind="rounded_probabilities", digits=2)
    assert rounded[0] == {"label": "grant", "probabilities": {"deny": 0.12, "grant": 0.88}}
    assert explain.present_output(P, classes, kind="rounded_probabilities", digits=0)[1]["probabilities"] == {
        "deny": 1.0, "grant": 0.0}
    banded = explain.present_output(P, classes, kind="label_with_band")
    assert banded == [{"label": "grant", "confidence_band": "medium"}, {"label": "deny", "confidence_band": "high"},
                      {"label": "grant", "confidence_band": "low"}]
    labels = explain.present_output(P, classes, kind="label_only")
    assert labels == [{"label": "grant"}, {"label": "deny"}, {"label": "grant"}]
    for shown in banded + labels:
        assert not any(isinstance(v, float | dict) for v in shown.values())
    with pytest.raises(ValueError, match="kind"):
        explain.present_output(P, classes, kind="everything")
    with pytest.raises(ValueError, match="digits"):
        explain.present_output(P, classes, kind="rounded_probabilities", digits=7)


class _Opaque(nn.Module):
    """The same function as a Sequential MLP, in a shape the first-layer shortcut does not know."""

    def __init__(self, inner: nn.Sequential):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def _steep_shards(seed: int) -> tuple[list[nn.Module], np.ndarray]:
    """Two steep MLP shards and 25 rows, each shard's margin centred on the rows so about
    half of them sit on each side of its boundary: where counterfactual searches differ."""
    shards = [_model(seed), _model(seed + 10)]
    rows = _rows(25, seed=seed)
    with torch.no_grad():
        for shard in shards:
            for p in shard.parameters():
                p.mul_(5.0)
            logits = shard(torch.from_numpy(rows))
            shard[-1].bias[1] -= float((logits[:, 1] - logits[:, 0]).median())
    return shards, rows


def test_the_counterfactual_search_finds_the_same_hints_through_the_first_layer_shortcut():
    # Speed is measured in `make bench`; here, that the shortcut (W·x plus the changed
    # columns) finds what a plain forward of every candidate finds, for MLPs and ensembles.
    for seed in range(4):
        shards, rows = _steep_shards(seed)
        fast = explain.Ensemble(shards)
        plain = explain.Ensemble([_Opaque(shard) for shard in shards])
        assert explain._first_linear_layers(fast) is not None and explain._first_linear_layers(plain) is None
        found = 0
        for x in rows:
            a = explain.counterfactual_hint(fast, x, encoding=ENCODING)
            b = explain.counterfactual_hint(plain, x, encoding=ENCODING)
            assert (a is None) == (b is None)
            if a is not None:
                found += 1
                assert a["feature"] == b["feature"] and a["new_label_index"] == b["new_label_index"]
                if isinstance(a["to"], str):  # a category switch
                    assert a["to"] == b["to"]
                else:
                    assert a["to"] == pytest.approx(b["to"], rel=1e-3, abs=1e-3)
        assert found >= 10


def test_the_served_grid_finds_the_hints_a_four_times_finer_grid_finds(monkeypatch):
    # The search's grid is a speed/recall trade (26 points, steps of 4% of a range): on
    # steep MLP ensembles whose rows sit on both sides of the boundary it must find what a
    # 101-point grid finds, the same feature and the same value to within the bisection.
    compared = found = 0
    for seed in range(4):
        shards, rows = _steep_shards(seed)
        ensemble = explain.Ensemble(shards)
        served = [explain.counterfactual_hint(ensemble, x, encoding=ENCODING) for x in rows]
        monkeypatch.setattr(explain, "_CF_GRID", 101)
        finer = [explain.counterfactual_hint(ensemble, x, encoding=ENCODING) for x in rows]
        monkeypatch.undo()
        for a, b in zip(served, finer, strict=True):
            compared += 1
            assert (a is None) == (b is None)
            if a is not None:
                found += 1
                assert a["feature"] == b["feature"] and a["new_label_index"] == b["new_label_index"]
                if isinstance(a["to"], str):
                    assert a["to"] == b["to"]
                else:
                    assert a["to"] == pytest.approx(b["to"], rel=1e-3, abs=1e-3)
    assert compared == 100 and found >= 10


def test_the_bulk_path_of_batches_audits_and_summaries_equals_captums_integrated_gradients(monkeypatch):
    ensemble = explain.Ensemble([_model(seed=s) for s in range(2)])
    X = _rows(300)
    targets = np.random.default_rng(5).integers(0, 2, 300)
    monkeypatch.setattr(explain, "CAPTUM_MAX_ROWS", 10_000)  # every row through Captum
    through_captum = explain.explain(ensemble, X, encoding=ENCODING, targets=targets, n_steps=32)
    captum = through_captum.values
    bulk = explain.integrated_gradients_bulk(ensemble, X, encoding=ENCODING, targets=targets, n_steps=32)
    assert np.abs(bulk - captum).max() < 1e-6
    monkeypatch.setattr(explain, "CAPTUM_MAX_ROWS", 64)
    batched = explain.explain(ensemble, X, encoding=ENCODING, targets=targets, n_steps=32)
    assert np.abs(batched.values - captum).max() < 1e-6
    assert np.abs(batched.convergence_delta - through_captum.convergence_delta).max() < 1e-5
    norms = explain.attribution_norms(ensemble, X, targets, encoding=ENCODING, n_steps=32)
    assert norms == pytest.approx(np.abs(captum).sum(axis=1), abs=1e-6)
