"""The epsilon explorer's numbers, checked without a browser: the noise is the calibrated one,
the AUC is the README's measurement, and the attack bounds hold against an exact reference."""

from __future__ import annotations

import math
import re

import pytest
from scipy.stats import norm

from privkit import accounting, risk
from privkit.recipes import RECIPES
from privkit.widgets import explorer, html_summary, what_epsilon_buys

TINY = dict(n_train=256, batch_size=32, epochs=1, delta=1e-3)


def test_the_noise_is_calibrated_to_the_budget_as_training_plans_it() -> None:
    view = what_epsilon_buys(epsilon=2.0, recipe="cnn", **TINY)
    m = view.mechanism
    assert (m.sample_rate, m.steps) == (32 / 256, 8)
    spent = accounting.epsilon(
        noise_multiplier=m.noise_multiplier, sample_rate=m.sample_rate, steps=m.steps, delta=1e-3
    )
    assert 0.99 * 2.0 <= spent <= 2.0 and spent == m.epsilon
    assert not view.recipe_settings  # batch 32 and 1 epoch are not the cnn recipe's 256 and 30


def test_bounds_are_exact_where_the_mechanism_is_exactly_gaussian_dp() -> None:
    # Every record in every batch (sample rate 1): the mechanism is mu-GDP, mu = sqrt(steps) / sigma,
    # whose trade-off curve is TPR = Phi(Phi^-1(FPR) + mu) (Dong, Roth & Su 2019), here from scipy.
    view = what_epsilon_buys(
        epsilon=1.0, n_train=256, batch_size=256, epochs=4, delta=1e-3, prior=0.05
    )
    m = view.mechanism
    mu = math.sqrt(m.steps) / m.noise_multiplier
    for fpr, bound in [*view.tpr_bounds.items(), (0.05, view.reconstruction_bound)]:
        assert bound == pytest.approx(norm.cdf(norm.ppf(fpr) + mu), rel=1e-9)


def test_bounds_lie_between_guessing_and_what_epsilon_delta_alone_allows() -> None:
    last = dict.fromkeys((0.001, 0.01), 0.0)
    for epsilon in (0.5, 2.0, 8.0):
        view = what_epsilon_buys(epsilon=epsilon, recipe="cnn", **TINY)
        assert list(view.tpr_bounds) == [0.001, 0.01]
        for fpr, bound in view.tpr_bounds.items():
            assert fpr < bound <= risk.tpr_bound(fpr, epsilon=view.mechanism.epsilon, delta=1e-3)
            assert bound > last[fpr]  # a larger budget allows more
            last[fpr] = bound
        assert view.reconstruction_prior == 1 / 256
        assert view.reconstruction_prior < view.reconstruction_bound < view.tpr_bounds[0.01]


def _readme_row(label: str) -> list[tuple[float, float]]:
    """(mean, sd) cells of a recipe's row of the README's measured table, read independently."""
    text = open("README.md", encoding="utf-8").read()
    row = next(line for line in text.splitlines() if line.startswith(f"| {label} "))
    return [(float(a), float(b)) for a, b in re.findall(r"(0\.\d+) ± (0\.\d+)", row)]


@pytest.mark.parametrize(("name", "label"), [("scatternet", "**`scatternet`**"), ("cnn", "`cnn`")])
def test_the_measured_auc_is_the_readme_table(name: str, label: str) -> None:
    row = _readme_row(label)
    table = RECIPES[name].measured_auc
    assert [table[e] for e in (0.5, 1.0, 2.0, 4.0, 8.0, math.inf)] == row
    for e, (mean, sd) in table.items():
        assert (
            RECIPES[name].auc(e).measured == ((e, mean, sd),)
            and not RECIPES[name].auc(e).interpolated
        )


def test_the_auc_is_interpolated_in_log_epsilon_and_never_extrapolated() -> None:
    recipe = RECIPES["scatternet"]
    third = recipe.auc(2.0 ** (1 / 3))  # a third of the way from epsilon 1 to 2 in log epsilon
    assert third.auc == pytest.approx(0.949 + (0.961 - 0.949) / 3)
    assert [e for e, *_ in third.measured] == [1.0, 2.0] and third.interpolated
    assert recipe.auc(0.25) is None and recipe.auc(12.0) is None
    view = what_epsilon_buys(epsilon=0.25, **TINY)
    assert view.auc is None and "not measured at this ε" in html_summary(view)


def test_the_summary_shows_each_number_and_rounds_bounds_up() -> None:
    view = what_epsilon_buys(epsilon=3.0, **TINY)
    text = html_summary(view)
    assert f"<b>{view.mechanism.noise_multiplier:.3g}</b>" in text
    assert (
        f"<b>{view.auc.auc:.3f}</b>" in text
        and "interpolated between 0.961 ± 0.005 at ε = 2" in text
    )
    shown = [float(x) / 100 for x in re.findall(r"<b>([\d.]+)%</b>", text)]
    bounds = [*view.tpr_bounds.values(), view.reconstruction_bound]
    assert len(shown) == 3 and all(s >= b for s, b in zip(shown, bounds))
    assert "not these" in text  # batch size and epochs differ from those the AUC was measured with


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="epsilon=inf"):
        what_epsilon_buys(epsilon=math.inf, **TINY)
    with pytest.raises(ValueError, match="n_train=0"):
        what_epsilon_buys(epsilon=1.0, n_train=0, delta=1e-5)
    with pytest.raises(ValueError, match="recipe='vgg'"):
        what_epsilon_buys(epsilon=1.0, recipe="vgg", **TINY)


def test_moving_a_slider_replans_and_redraws() -> None:
    box = explorer(epsilon=1.0, recipe="cnn", **TINY)
    sliders = {s.description: s for s in box.children[0].children}
    assert (
        set(sliders) == {"ε", "δ", "batch size", "epochs"} and max(sliders["δ"].options) < 1 / 256
    )
    before, html_before = box.view, box.children[1].value
    sliders["ε"].value = 4.0
    assert box.view.mechanism.noise_multiplier < before.mechanism.noise_multiplier
    assert box.children[1].value != html_before == html_summary(before)
    assert box._repr_mimebundle_()["text/html"] == html_summary(box.view)  # the static snapshot
