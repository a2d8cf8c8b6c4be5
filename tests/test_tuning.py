"""Private hyperparameter search against dp_accounting's repeat-and-select (Papernot & Steinke
2022), and the search itself on synthetic data."""

from __future__ import annotations

import math
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from dp_accounting import dp_event

from privkit import accounting, data, tuning
from privkit.train import TrainConfig


def _reference(sigma: float, q: float, steps: int, mu: float, orders: list[float]) -> float:
    accountant = dp_accounting.rdp.RdpAccountant(orders)
    run = dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)
    accountant.compose(dp_event.RepeatAndSelectDpEvent(run, mu, math.inf))  # shape inf: Poisson
    return accountant.get_epsilon(1e-5)


@pytest.mark.parametrize(("sigma", "q", "steps"), [(1.0, 256 / 4708, 370), (10.0, 1024 / 4708, 300), (3.0, 0.01, 1000)])
@pytest.mark.parametrize("mu", [1, 3, 10, 100])
def test_tuning_epsilon_equals_dp_accounting_at_integer_orders(
    monkeypatch: pytest.MonkeyPatch, sigma: float, q: float, steps: int, mu: float
) -> None:
    orders = list(range(2, 257))
    monkeypatch.setattr(tuning, "ORDERS", tuple(orders))
    ours = tuning.tuning_epsilon([(sigma, q, steps)], delta=1e-5, mean_trials=mu)
    assert ours == pytest.approx(_reference(sigma, q, steps, mu, orders), rel=1e-9)


def test_fractional_orders_are_tighter_than_dp_accountings_bound_but_cost_more_than_one_run() -> None:
    """Between orders 1 and 2 Opacus computes the sampled Gaussian's RDP exactly, where
    dp_accounting uses an upper bound; a search still costs more than a single run."""
    run = (1.0, 256 / 4708, 370)
    single = accounting.epsilon(noise_multiplier=1.0, sample_rate=run[1], steps=run[2], delta=1e-5, accountant="rdp")
    searches = [tuning.tuning_epsilon([run], delta=1e-5, mean_trials=mu) for mu in (1, 2, 10, 100)]
    assert single < searches[0] and searches == sorted(searches)
    for mu, ours in zip((1, 2, 10, 100), searches):
        assert ours <= _reference(*run, mu, list(tuning.ORDERS))


def test_a_search_is_charged_its_worst_candidate() -> None:
    noisy, weak = (8.0, 0.2, 300), (2.0, 0.2, 300)
    both = tuning.tuning_epsilon([noisy, weak], delta=1e-5, mean_trials=5)
    assert both == tuning.tuning_epsilon([weak], delta=1e-5, mean_trials=5)
    assert both > tuning.tuning_epsilon([noisy], delta=1e-5, mean_trials=5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mechanisms": [], "mean_trials": 5}, "at least one mechanism"),
        ({"mechanisms": [(1.0, 0.1, 10)], "mean_trials": 0.5}, "mean_trials=0.5"),
        ({"mechanisms": [(0.0, 0.1, 10)], "mean_trials": 5}, r"mechanisms\[0\].noise_multiplier=0.0"),
        ({"mechanisms": [(1.0, 1.5, 10)], "mean_trials": 5}, r"mechanisms\[0\].sample_rate=1.5"),
        ({"mechanisms": [(1.0, 0.1, 2.5)], "mean_trials": 5}, r"mechanisms\[0\].steps=2.5"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tuning.tuning_epsilon(delta=1e-5, **kwargs)


def test_random_search_keeps_the_best_trial_by_validation_auc(synthetic_root: Path) -> None:
    dataset = data.load("pneumoniamnist", root=synthetic_root)
    candidates = [
        TrainConfig(model="cnn", epsilon=4.0, epochs=1, batch_size=64, lr=lr, delta=1e-3, device="cpu")
        for lr in (0.01, 0.1, 1.0)
    ]
    search = tuning.random_search(candidates, mean_trials=4, seed=3, dataset=dataset, progress=False)
    again = tuning.random_search(candidates, mean_trials=4, seed=3, dataset=dataset, progress=False)
    assert len(search.trials) == len(again.trials) == np.random.default_rng([3, 0x7475]).poisson(4)
    assert search.best is max(search.trials, key=lambda r: r.metrics["val"]["auc"])
    assert [t.config for t in search.trials] == [t.config for t in again.trials]
    assert {t.config.lr for t in search.trials} <= {0.01, 0.1, 1.0}
    sigmas = {round(t.mechanism.noise_multiplier, 6) for t in search.trials}
    assert len(sigmas) == 1  # same schedule: every trial calibrated to the same per-run epsilon
    mech = search.trials[0].mechanism
    assert search.epsilon == tuning.tuning_epsilon(
        [(mech.noise_multiplier, mech.sample_rate, mech.steps)], delta=1e-3, mean_trials=4
    )
    assert search.epsilon > 4.0  # the search costs more than the per-run budget


def test_random_search_refuses_candidates_on_different_data() -> None:
    with pytest.raises(ValueError, match="share dataset, delta and data_root"):
        tuning.random_search([TrainConfig(delta=1e-5), TrainConfig(delta=1e-6)], mean_trials=2)
