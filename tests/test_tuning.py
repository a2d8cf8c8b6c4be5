"""Private hyperparameter search against dp_accounting's repeat-and-select (Papernot & Steinke
2022), and the search itself on synthetic data."""

from __future__ import annotations

import math
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import dp_event

from privkit import accounting, data, tuning
from privkit.train import TrainConfig


def _reference(sigma: float, q: float, steps: int, mu: float, orders: list[float]) -> float:
    accountant = dp_accounting.rdp.RdpAccountant(orders)
    run = dp_event.SelfComposedDpEvent(
        dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps
    )
    accountant.compose(dp_event.RepeatAndSelectDpEvent(run, mu, math.inf))  # shape inf: Poisson
    return accountant.get_epsilon(1e-5)


@pytest.mark.parametrize(
    ("sigma", "q", "steps"), [(1.0, 256 / 4708, 370), (10.0, 1024 / 4708, 300), (3.0, 0.01, 1000)]
)
@pytest.mark.parametrize("mu", [1, 3, 10, 100])
def test_tuning_epsilon_equals_dp_accounting_at_integer_orders(
    monkeypatch: pytest.MonkeyPatch, sigma: float, q: float, steps: int, mu: float
) -> None:
    orders = list(range(2, 257))
    monkeypatch.setattr(tuning, "ORDERS", tuple(orders))
    ours = tuning.tuning_epsilon([(sigma, q, steps)], delta=1e-5, mean_trials=mu)
    assert ours == pytest.approx(_reference(sigma, q, steps, mu, orders), rel=1e-9)


def test_fractional_orders_are_tighter_than_dp_accountings_bound_but_cost_more_than_one_run() -> (
    None
):
    """Between orders 1 and 2 Opacus computes the sampled Gaussian's RDP exactly, where
    dp_accounting uses an upper bound; a search still costs more than a single run."""
    run = (1.0, 256 / 4708, 370)
    single = accounting.epsilon(
        noise_multiplier=1.0, sample_rate=run[1], steps=run[2], delta=1e-5, accountant="rdp"
    )
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
        (
            {"mechanisms": [(0.0, 0.1, 10)], "mean_trials": 5},
            r"mechanisms\[0\].noise_multiplier=0.0",
        ),
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
        TrainConfig(
            model="cnn", epsilon=4.0, epochs=1, batch_size=64, lr=lr, delta=1e-3, device="cpu"
        )
        for lr in (0.01, 0.1, 1.0)
    ]
    search = tuning.random_search(candidates, mean_trials=3, dataset=dataset, progress=False)
    assert search.best is max(search.trials, key=lambda r: r.metrics["val"]["auc"], default=None)
    assert {t.config.lr for t in search.trials} <= {0.01, 0.1, 1.0}
    sigmas = {round(t.mechanism.noise_multiplier, 6) for t in search.trials}
    assert len(sigmas) <= 1  # same schedule: every trial calibrated to the same per-run epsilon
    mech = tuning.plan(candidates[0], len(dataset.train))
    assert search.epsilon == tuning.tuning_epsilon(
        [(mech.noise_multiplier, mech.sample_rate, mech.steps)], delta=1e-3, mean_trials=3
    )
    assert search.epsilon > 4.0  # the search costs more than the per-run budget


def test_the_number_of_trials_is_poisson_and_comes_from_no_seed() -> None:
    # An attacker who reads the code and the configuration cannot predict K: two searches
    # draw different counts, and the counts follow Poisson(mean) (mean = variance).
    counts = np.array([len(tuning.draw_trials(3, mean_trials=10)) for _ in range(4000)])
    assert abs(counts.mean() - 10) < 0.25 and abs(counts.var() - 10) < 1.5
    first = [tuning.draw_trials(3, mean_trials=10) for _ in range(20)]
    assert len({tuple(t) for t in first}) == 20
    picks = np.concatenate([tuning.draw_trials(3, mean_trials=10) for _ in range(500)])
    assert np.all(np.abs(np.bincount(picks, minlength=3) / len(picks) - 1 / 3) < 0.03)


def test_trials_of_one_candidate_are_independent(synthetic_root: Path) -> None:
    dataset = data.load("pneumoniamnist", root=synthetic_root)
    config = TrainConfig(
        model="cnn", epsilon=4.0, epochs=1, batch_size=64, delta=1e-3, device="cpu"
    )
    a, b = (tuning.train(config, dataset=dataset, progress=False) for _ in range(2))
    weights = [torch.nn.utils.parameters_to_vector(r.model.parameters()) for r in (a, b)]
    assert not torch.equal(*weights)  # same config and seed, fresh noise and draws


def test_random_search_refuses_seeded_candidates() -> None:
    with pytest.raises(ValueError, match=r"candidates \[1\] have randomness='seeded'"):
        tuning.random_search([TrainConfig(), TrainConfig(randomness="seeded")], mean_trials=2)


def test_random_search_refuses_candidates_on_different_data() -> None:
    with pytest.raises(ValueError, match="share dataset, delta and data_root"):
        tuning.random_search([TrainConfig(delta=1e-5), TrainConfig(delta=1e-6)], mean_trials=2)
