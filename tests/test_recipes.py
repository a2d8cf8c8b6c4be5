"""Recipes: every one builds valid runs, learning rates are the tuned ones or interpolated
between them, and the non-private baseline gets its own."""

from __future__ import annotations

import math

import pytest

from privkit.recipes import RECIPES, get_recipe
from privkit.train import TrainConfig


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_builds_valid_runs_at_every_tuned_budget(name: str) -> None:
    recipe = RECIPES[name]
    for epsilon, lr in recipe.learning_rates.items():
        config = recipe.config(epsilon, seed=3)
        assert isinstance(config, TrainConfig)
        assert (config.epsilon, config.lr, config.seed) == (epsilon, lr, 3)
        assert {k: getattr(config, k) for k in recipe.settings} == dict(recipe.settings)


def test_learning_rate_between_and_outside_the_tuned_budgets() -> None:
    recipe = get_recipe("scatternet")
    rates = recipe.learning_rates
    finite = sorted(e for e in rates if math.isfinite(e))
    for lo, hi in zip(finite, finite[1:]):
        middle = math.sqrt(lo * hi)  # halfway in log epsilon: the geometric mean of the rates
        assert recipe.lr(middle) == pytest.approx(math.sqrt(rates[lo] * rates[hi]))
    assert recipe.lr(finite[0] / 10) == rates[finite[0]]
    assert recipe.lr(finite[-1] * 10) == rates[finite[-1]]
    assert recipe.lr(math.inf) == rates[math.inf]


def test_sweep_is_every_budget_and_seed_plus_the_baseline_and_overrides_win() -> None:
    configs = get_recipe("cnn").sweep([1.0, 8.0], [0, 1], epochs=2, device="cpu")
    assert [(c.epsilon, c.seed) for c in configs] == [
        (1.0, 0),
        (1.0, 1),
        (8.0, 0),
        (8.0, 1),
        (math.inf, 0),
        (math.inf, 1),
    ]
    assert {(c.epochs, c.device) for c in configs} == {(2, "cpu")}


def test_unknown_recipe_and_bad_epsilon_are_named() -> None:
    with pytest.raises(ValueError, match="recipe='vgg'.*scatternet, cnn"):
        get_recipe("vgg")
    with pytest.raises(ValueError, match="epsilon=-1"):
        get_recipe("cnn").lr(-1)


def test_an_unknown_override_is_named() -> None:
    with pytest.raises(ValueError, match=r"Unknown training parameter\(s\) \['epoch'\]"):
        get_recipe("scatternet").config(1.0, epoch=3)
