"""Individualised DP-SGD (Boenisch et al. 2023): each group's epsilon within its budget and
checked by a second accountant; groups charged to their own scopes before any data are read."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from privkit import accounting, budget, data, individual
from privkit import train as train_module
from privkit.individual import assign_groups, plan
from privkit.train import TrainConfig

STEPS, DELTA = 180, 1e-5
SIZES = {"strict": 1500, "relaxed": 3208}


def test_each_group_spends_at_most_its_epsilon_by_a_second_accountant() -> None:
    from dp_accounting import dp_event, rdp

    p = plan(
        group_epsilons={"strict": 1.0, "relaxed": 4.0},
        group_sizes=SIZES,
        batch_size=256,
        steps=STEPS,
        delta=DELTA,
        accountant="rdp",
    )
    assert p.groups == ("strict", "relaxed")
    for q, target, eps in zip(p.sample_rates, p.targets, p.epsilons):
        event = dp_event.SelfComposedDpEvent(
            dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(p.noise_multiplier)), STEPS
        )
        reference = rdp.RdpAccountant().compose(event).get_epsilon(DELTA)
        assert reference <= target * 1.001  # dp_accounting's orders differ slightly from Opacus's
        assert 0.99 * target <= eps <= target
    assert p.sample_rates[0] < 256 / sum(SIZES.values()) < p.sample_rates[1]
    assert p.expected_batch_size == pytest.approx(256, rel=2e-3)


def test_groups_with_one_budget_get_plain_dp_sgd() -> None:
    p = plan(
        group_epsilons={"strict": 2.0, "relaxed": 2.0},
        group_sizes=SIZES,
        batch_size=256,
        steps=STEPS,
        delta=DELTA,
        accountant="rdp",
    )
    q = 256 / sum(SIZES.values())
    assert p.sample_rates == pytest.approx((q, q), rel=2e-3)
    sigma = accounting.calibrate_noise(
        target_epsilon=2.0,
        target_delta=DELTA,
        sample_rate=q,
        steps=STEPS,
        accountant="rdp",
        tolerance=0.001,
    )
    assert p.noise_multiplier == pytest.approx(sigma, rel=5e-3)


def test_individual_noise_is_below_that_of_the_strictest_budget() -> None:
    p = plan(
        group_epsilons={"strict": 1.0, "relaxed": 8.0},
        group_sizes=SIZES,
        batch_size=256,
        steps=STEPS,
        delta=DELTA,
        accountant="rdp",
    )
    strictest = accounting.calibrate_noise(
        target_epsilon=1.0,
        target_delta=DELTA,
        sample_rate=256 / 4708,
        steps=STEPS,
        accountant="rdp",
    )
    assert p.noise_multiplier < 0.8 * strictest


def test_a_lenient_group_is_capped_at_rate_one() -> None:
    p = plan(
        group_epsilons={"strict": 0.5, "open": 1e4},
        group_sizes={"strict": 1000, "open": 10},
        batch_size=20,
        steps=50,
        delta=DELTA,
        accountant="rdp",
    )
    assert p.sample_rates[1] == 1.0 and p.epsilons[1] <= 1e4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(group_epsilons={"a": 0.0}, group_sizes={"a": 10}), r"group_epsilons\['a'\]=0.0"),
        (dict(group_epsilons={"a": math.inf}, group_sizes={"a": 10}), r"group_epsilons\['a'\]=inf"),
        (dict(group_epsilons={"a": 1.0}, group_sizes={"b": 10}), "same groups"),
        (dict(group_epsilons={"a": 1.0}, group_sizes={"a": 0}), r"group_sizes\['a'\]=0"),
        (dict(group_epsilons={"a": 1.0}, group_sizes={"a": 5}), "batch_size=8"),
    ],
)
def test_bad_plans_name_the_argument(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan(**kwargs, batch_size=8, steps=10, delta=DELTA, accountant="rdp")


def test_assign_groups_is_seeded_and_proportional() -> None:
    a = assign_groups(1000, {"x": 0.25, "y": 0.75}, seed=1)
    assert (a == assign_groups(1000, {"x": 0.25, "y": 0.75}, seed=1)).all()
    assert (a == "x").sum() == 250
    with pytest.raises(ValueError, match="add up to 1"):
        assign_groups(10, {"x": 0.5, "y": 0.6})


QUICK = dict(epochs=1, batch_size=32, device="cpu", delta=1e-3, accountant="rdp")


def _groups(root: Path) -> np.ndarray:
    return assign_groups(data.train_size("pneumoniamnist", root=str(root)), {"s": 0.5, "r": 0.5})


def test_each_group_is_charged_its_own_mechanism(synthetic_root: Path, tmp_path: Path) -> None:
    ledger = budget.Ledger(tmp_path / "ledger.sqlite")
    config = TrainConfig(data_root=str(synthetic_root), **QUICK)
    out = individual.train(
        config,
        groups=_groups(synthetic_root),
        group_epsilons={"s": 1.0, "r": 4.0},
        ledger=ledger,
        progress=False,
    )
    spends = {s.scopes[0]: s for s in ledger.history()}
    assert set(spends) == {"dataset:pneumoniamnist/group:s", "dataset:pneumoniamnist/group:r"}
    for g in ("s", "r"):
        spend = spends[f"dataset:pneumoniamnist/group:{g}"]
        mech = out.plan.mechanism(g)
        assert (spend.noise_multiplier, spend.sample_rate, spend.steps) == pytest.approx(
            (mech.noise_multiplier, mech.sample_rate, mech.steps)
        )
    assert ledger.spent("dataset:pneumoniamnist/group:s").epsilon <= 1.0
    # train_many's own mechanism, not patched afterwards: the loosest group's, bounding everyone's
    assert out.result.mechanism == out.plan.mechanism("r")
    assert out.result.mechanism.epsilon == out.plan.epsilon("r") > out.plan.epsilon("s")
    assert 0 <= out.result.metrics["test"]["auc"] <= 1


def test_training_samples_each_record_at_its_groups_rate(
    synthetic_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = {}
    real = train_module.train_many

    def spy(configs, **kwargs):
        seen.update(kwargs)
        return real(configs, **kwargs)

    monkeypatch.setattr(individual, "train_many", spy)
    groups = _groups(synthetic_root)
    out = individual.train(
        TrainConfig(data_root=str(synthetic_root), **QUICK),
        groups=groups,
        group_epsilons={"s": 1.0, "r": 4.0},
        progress=False,
    )
    rates = seen["sample_rates"][0]
    for g in ("s", "r"):
        assert torch.all(
            rates[torch.from_numpy(groups == g)]
            == torch.tensor(out.plan.sample_rates[out.plan.groups.index(g)], dtype=torch.float64)
        )


def test_a_refused_group_reads_no_data(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = budget.Ledger(tmp_path / "ledger.sqlite")
    ledger.set_budget("dataset:pneumoniamnist/group:s", epsilon=0.5, delta=1e-3)
    monkeypatch.setattr(data, "load", lambda *a, **k: pytest.fail("data were read"))
    with pytest.raises(budget.BudgetExceededError, match="group:s"):
        individual.train(
            TrainConfig(data_root=str(synthetic_root), **QUICK),
            groups=_groups(synthetic_root),
            group_epsilons={"s": 1.0, "r": 4.0},
            ledger=ledger,
            progress=False,
        )
    assert all(s.scopes != ("dataset:pneumoniamnist/group:s",) for s in ledger.history())


def test_bad_groups_are_refused(synthetic_root: Path) -> None:
    config = TrainConfig(data_root=str(synthetic_root), **QUICK)
    groups = _groups(synthetic_root)
    with pytest.raises(ValueError, match="one per training record"):
        individual.train(config, groups=groups[:-1], group_epsilons={"s": 1.0, "r": 4.0})
    with pytest.raises(ValueError, match=r"have no epsilon"):
        individual.train(config, groups=groups, group_epsilons={"s": 1.0})
    with pytest.raises(ValueError, match="backend"):
        individual.train(
            TrainConfig(data_root=str(synthetic_root), backend="opacus", **QUICK),
            groups=groups,
            group_epsilons={"s": 1.0, "r": 4.0},
        )


def test_assigned_groups_do_not_line_up_with_data_shuffled_by_the_same_seed() -> None:
    sorted_labels = np.repeat([0, 1], [400, 600])
    shuffled = np.random.default_rng(0).permutation(sorted_labels)  # how many npz files are made
    groups = assign_groups(1000, {"a": 0.4, "b": 0.6}, seed=0)
    assert abs(np.corrcoef(shuffled, groups == "a")[0, 1]) < 0.15
