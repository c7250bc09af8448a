"""The benchmark harness's scale-curve helpers (issue 21.4): arithmetic only, no timing."""

import pytest

from benchmarks.harness import CURVE_FACTORS, curve_factors, factor_label, growth


def test_growth_is_the_quotient_of_both_sides_growths():
    result = growth(name="x", sizes=["0.1x", "1x", "3x"], service=[2.0, 9.0, 60.0], baseline=[1.0, 5.0, 25.0],
                    tolerance=1.2)
    assert result.value == pytest.approx(30.0)
    assert result.baseline_value == pytest.approx(25.0)
    assert result.ratio == pytest.approx(1.2)
    assert result.target == "ratio <= 1.2"
    assert result.meets_target() is True
    assert result.name == "x: growth 0.1x -> 3x"
    # The growth quotient is the quotient of the last and first sizes' own ratios.
    assert result.ratio == pytest.approx((60.0 / 25.0) / (2.0 / 1.0))


def test_growth_faster_than_the_baseline_misses():
    result = growth(name="x", sizes=["a", "b"], service=[1.0, 40.0], baseline=[1.0, 30.0], tolerance=1.2)
    assert result.meets_target() is False


@pytest.mark.parametrize("service,baseline,sizes", [([1.0], [1.0], ["a"]), ([1.0, 2.0], [1.0], ["a", "b"]),
                                                    ([1.0, 2.0], [1.0, 2.0], ["a"])])
def test_growth_needs_two_sizes_on_both_sides(service, baseline, sizes):
    with pytest.raises(ValueError):
        growth(name="x", sizes=sizes, service=service, baseline=baseline, tolerance=1.2)


def test_curve_factors_and_opt_out(monkeypatch):
    monkeypatch.delenv("BENCH_CURVE", raising=False)
    assert curve_factors() == CURVE_FACTORS == (0.1, 1.0, 3.0)
    monkeypatch.setenv("BENCH_CURVE", "0")
    assert curve_factors() == (1.0,)
    assert [factor_label(f) for f in CURVE_FACTORS] == ["0.1x", "1x", "3x"]
