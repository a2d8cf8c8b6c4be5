"""The epsilons and noise multipliers every workflow reported on main before the one-mechanism
refactor (commit fbd452d, recorded 2026-11-29): moving code must not move a number.

Each value was printed by that commit's planner for the same arguments; the calls below may
change with the API, the numbers may not (relative 1e-9: same arithmetic, same accountant).
"""

import math

import pytest

from privkit import accounting, individual, private_calibration, train
from privkit.attacks import reconstruction
from privkit.federated import algorithms, local

SAME = dict(rel=1e-9, abs=0.0)


@pytest.mark.parametrize(
    "config, n_train, recorded",
    [
        (
            train.TrainConfig(epsilon=4.0, epochs=3, batch_size=64),
            4708,
            [0.6748744507911499, 0.013593882752761258, 222, 3.997749491786545],
        ),
        (
            train.TrainConfig(epsilon=1.0, epochs=10, batch_size=256, accountant="rdp"),
            4708,
            [3.1702459560736136, 0.05437553101104503, 180, 0.9993484935215939],
        ),
        (
            train.TrainConfig(epsilon=None, noise_multiplier=1.3, epochs=2, batch_size=128),
            1000,
            [1.3, 0.128, 16, 2.5368580401594767],
        ),
    ],
)
def test_centralised_training(config, n_train, recorded):
    m = train.plan(config, n_train)
    assert [m.noise_multiplier, m.sample_rate, m.steps, m.epsilon] == pytest.approx(
        recorded, **SAME
    )


def test_a_hospitals_local_training():
    s = local.plan_site(
        "h1",
        1200,
        epsilon=3.0,
        delta=1e-5,
        batch_size=64,
        local_epochs=2,
        rounds=5,
        max_grad_norm=1.0,
    )
    m = s.mechanism
    assert [m.noise_multiplier, m.sample_rate, m.steps, m.epsilon] == pytest.approx(
        [1.325350722924753, 0.05333333333333334, 190, 2.9984406433505866], **SAME
    )


def test_site_level_dp_on_the_server():
    config = algorithms.FederatedConfig(
        site_level_epsilon=2.0, site_level_delta=1e-3, rounds=20, site_sample_rate=0.5
    )
    p = algorithms.plan_server(config, 10)
    assert [p.noise_multiplier, p.sample_rate, p.steps, p.epsilon] == pytest.approx(
        [3.399152474183844, 0.5, 20, 1.9985891390854402], **SAME
    )


def test_individualised_groups():
    p = individual.plan(
        group_epsilons={"strict": 1.0, "loose": 4.0},
        group_sizes={"strict": 1000, "loose": 3000},
        batch_size=200,
        steps=300,
        delta=1e-5,
    )
    sigma, rates, steps, epsilons, groups = [
        1.4037335166740486,
        [0.01713958600677961, 0.06097847692163488],
        300,
        [0.9998226908982846, 3.9992101427758393],
        ["strict", "loose"],
    ]
    assert list(p.groups) == groups and p.steps == steps
    assert p.noise_multiplier == pytest.approx(sigma, **SAME)
    assert list(p.sample_rates) == pytest.approx(rates, **SAME)
    assert list(p.epsilons) == pytest.approx(epsilons, **SAME)


def test_dp_temperature_scaling():
    fit = private_calibration.fit_temperature_dp(
        [0, 1, 1, 0] * 100, [-2.0, 2.0, 1.0, 1.0] * 100, epsilon=2.0, delta=1e-5
    )
    m = fit.mechanism
    assert [m.noise_multiplier, m.steps, m.epsilon] == pytest.approx(
        [5.668939661658126, 8, 1.9989706465614754], **SAME
    )


def test_reconstruction_defences():
    settings = reconstruction.defenses(
        max_grad_norm=1.0,
        epsilons=[1.0, 8.0],
        noise_multipliers=[0.01],
        delta=1e-5,
        sample_rate=0.01,
        steps=1000,
    )
    recorded = [
        ["none", 0.0, math.inf],
        ["clip C=1", 0.0, math.inf],
        ["DP ε=1", 1.4252337838350146, 1.0],
        ["DP ε=8", 0.586612677329082, 8.0],
        ["DP ε≈5.4e+06", 0.01, 5449454.90621171],
    ]
    assert [d.name for d in settings] == [name for name, _, _ in recorded]
    for d, (_, sigma, eps) in zip(settings, recorded):
        assert d.noise_multiplier == pytest.approx(sigma, **SAME)
        # "DP ε=..." rows recorded their target; the accountant's epsilon for that noise may be
        # up to 1% below it (calibrate_noise's tolerance), never above
        assert d.epsilon == eps or eps * 0.99 <= d.epsilon <= eps * (1 + 1e-9)


def test_composition_of_two_runs():
    eps = accounting.compose([(1.0, 0.05, 100), (2.0, 0.1, 50)], delta=1e-5)
    assert eps == pytest.approx(3.863977434838299, **SAME)
