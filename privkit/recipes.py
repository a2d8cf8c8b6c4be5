"""Training recipes: everything but the privacy budget, as chosen for PneumoniaMNIST.

A recipe fixes the model and the optimiser; its learning rate depends on epsilon, because the
noise DP-SGD adds grows as epsilon shrinks and a noisier gradient wants smaller steps.

``scatternet`` is the frontier recipe: fixed ScatterNet features with a linear head (Tramèr &
Boneh 2021), large batches (De et al. 2022) at a small clipping norm, 60 epochs, and an
exponential moving average of the parameters (De et al. 2022). ``cnn`` is the previous default,
the small CNN of Tramèr & Boneh as in Opacus's MNIST example.

The learning rates were chosen on PneumoniaMNIST's validation split (mean AUC of seeds 10 to 12,
not the reported 0 to 2) from 0.25 to 8 for each epsilon and 0.01 to 0.25 without privacy; the
rest of the recipe after about 40 earlier configurations (batch size, epochs, learning rate,
head, EMA). That choice read private data and is not in the epsilon a run reports
(Papernot & Steinke 2022): see ``privkit.tuning`` and the README's "Tuning costs privacy too".
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from privkit import _validate
from privkit.train import TrainConfig, config_from_dict


def _between(budgets: Iterable[float], epsilon: float) -> tuple[float, float, float] | None:
    """``(e0, e1, w)``: the finite budgets around ``epsilon`` (e0 < epsilon < e1) and its
    weight on e1, linear in log epsilon; None at a budget or outside them."""
    finite = sorted(e for e in budgets if math.isfinite(e))
    if not finite or not finite[0] < epsilon < finite[-1] or epsilon in finite:
        return None
    hi = bisect.bisect(finite, epsilon)
    e0, e1 = finite[hi - 1], finite[hi]
    return e0, e1, math.log(epsilon / e0) / math.log(e1 / e0)


@dataclass(frozen=True)
class MeasuredAUC:
    """A recipe's test ROC AUC at ``epsilon``: measured there, or interpolated linearly in log
    epsilon between the two measured budgets around it (``measured`` lists what it rests on)."""

    epsilon: float
    auc: float
    measured: tuple[tuple[float, float, float], ...]  # (epsilon, mean AUC, sd over seeds)

    @property
    def interpolated(self) -> bool:
        return len(self.measured) > 1


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    settings: Mapping[str, Any]  # TrainConfig fields, the same at every epsilon
    learning_rates: Mapping[float, float]  # epsilon -> lr; math.inf: the non-private baseline
    # epsilon -> (mean, sd) of the test ROC AUC over seeds 0, 1, 2 on the real PneumoniaMNIST at
    # delta 1e-5 with these settings: the README's measurement (results/privacy_utility/metrics.csv,
    # full profile of experiments/privacy_utility.yaml on a 2-core CPU). Not a prediction for other data.
    measured_auc: Mapping[float, tuple[float, float]] = field(default_factory=dict)

    def lr(self, epsilon: float) -> float:
        """The learning rate at ``epsilon``: the tuned one, else interpolated linearly in
        (log epsilon, log lr) between tuned budgets, the nearest outside them.

        >>> round(RECIPES["scatternet"].lr(3.0), 3)  # tuned: 2.0 at epsilon 2, 4.0 at 4
        3.0
        """
        _validate.positive(epsilon=epsilon)
        rates = self.learning_rates
        if epsilon in rates:
            return rates[epsilon]
        around = _between(rates, epsilon)
        if around is None:  # outside the tuned budgets: the nearest
            finite = sorted(e for e in rates if math.isfinite(e))
            return (
                rates[finite[0]] if epsilon < finite[0] else rates.get(epsilon, rates[finite[-1]])
            )
        e0, e1, w = around
        return math.exp((1 - w) * math.log(rates[e0]) + w * math.log(rates[e1]))

    def auc(self, epsilon: float) -> MeasuredAUC | None:
        """The measured test AUC at ``epsilon`` (:attr:`measured_auc`): the mean at a measured
        budget, else interpolated linearly in log epsilon between the two around it; None
        outside the measured budgets (never extrapolated).

        >>> RECIPES["scatternet"].auc(1.0).auc
        0.949
        >>> round(RECIPES["scatternet"].auc(math.sqrt(2.0)).auc, 3)  # halfway from 0.949 to 0.961
        0.955
        """
        _validate.positive(epsilon=epsilon)
        table = self.measured_auc
        if epsilon in table:
            return MeasuredAUC(epsilon, table[epsilon][0], ((epsilon, *table[epsilon]),))
        around = _between(table, epsilon)
        if around is None:
            return None
        e0, e1, w = around
        return MeasuredAUC(
            epsilon, (1 - w) * table[e0][0] + w * table[e1][0], ((e0, *table[e0]), (e1, *table[e1]))
        )

    def config(self, epsilon: float, **overrides: Any) -> TrainConfig:
        """The recipe's run at ``epsilon``; ``overrides`` set anything else (seed, device, ...)."""
        return config_from_dict(
            {**self.settings, "lr": self.lr(epsilon), "epsilon": epsilon, **overrides}
        )

    def sweep(
        self,
        epsilons: Iterable[float],
        seeds: Iterable[int],
        *,
        nonprivate: bool = True,
        **overrides: Any,
    ) -> list[TrainConfig]:
        """One run per (epsilon, seed), plus the non-private baseline per seed."""
        budgets = list(epsilons) + ([math.inf] if nonprivate else [])
        return [self.config(e, seed=s, **overrides) for e in budgets for s in seeds]


RECIPES: dict[str, Recipe] = {
    "scatternet": Recipe(
        name="scatternet",
        description="ScatterNet + linear head, batch 1024, C = 0.1, 60 epochs, EMA 0.99",
        settings={
            "model": "scatternet",
            "epochs": 60,
            "batch_size": 1024,
            "max_grad_norm": 0.1,
            "momentum": 0.9,
            "ema": 0.99,
        },
        learning_rates={0.5: 0.5, 1.0: 1.0, 2.0: 2.0, 4.0: 4.0, 8.0: 4.0, math.inf: 0.05},
        measured_auc={
            0.5: (0.935, 0.007),
            1.0: (0.949, 0.006),
            2.0: (0.961, 0.005),
            4.0: (0.969, 0.004),
            8.0: (0.972, 0.002),
            math.inf: (0.980, 0.000),
        },
    ),
    "cnn": Recipe(
        name="cnn",
        description="Tramèr & Boneh's small CNN, batch 256, C = 1, 30 epochs (the previous default)",
        settings={
            "model": "cnn",
            "epochs": 30,
            "batch_size": 256,
            "max_grad_norm": 1.0,
            "momentum": 0.9,
        },
        learning_rates={8.0: 0.1, math.inf: 0.1},
        measured_auc={
            0.5: (0.866, 0.018),
            1.0: (0.907, 0.030),
            2.0: (0.939, 0.004),
            4.0: (0.951, 0.003),
            8.0: (0.948, 0.003),
            math.inf: (0.958, 0.006),
        },
    ),
}


def sweep_recipes(
    names: Iterable[str], epsilons: Iterable[float], seeds: Iterable[int], **overrides: Any
) -> list[TrainConfig]:
    """Every named recipe's sweep (``Recipe.sweep``), one after another, as the privacy-utility
    notebook trains them."""
    epsilons, seeds = list(epsilons), list(seeds)
    return [
        config for name in names for config in get_recipe(name).sweep(epsilons, seeds, **overrides)
    ]


def get_recipe(name: str) -> Recipe:
    """A recipe by name; an unknown one is an error that lists the known."""
    _validate.one_of(RECIPES, recipe=name)
    return RECIPES[name]
