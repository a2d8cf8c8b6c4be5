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
from dataclasses import dataclass
from typing import Any

from privkit import _validate
from privkit.train import TrainConfig, config_from_dict


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    settings: Mapping[str, Any]  # TrainConfig fields, the same at every epsilon
    learning_rates: Mapping[float, float]  # epsilon -> lr; math.inf: the non-private baseline

    def lr(self, epsilon: float) -> float:
        """The learning rate at ``epsilon``: the tuned one, else interpolated linearly in
        (log epsilon, log lr) between tuned budgets, the nearest outside them.

        >>> round(RECIPES["scatternet"].lr(3.0), 3)  # tuned: 2.0 at epsilon 2, 4.0 at 4
        3.0
        """
        _validate.positive(epsilon=epsilon)
        if epsilon in self.learning_rates:
            return self.learning_rates[epsilon]
        budgets = sorted(e for e in self.learning_rates if math.isfinite(e))
        if epsilon == math.inf or epsilon >= budgets[-1]:
            return self.learning_rates.get(epsilon, self.learning_rates[budgets[-1]])
        if epsilon <= budgets[0]:
            return self.learning_rates[budgets[0]]
        hi = bisect.bisect(budgets, epsilon)
        e0, e1 = budgets[hi - 1], budgets[hi]
        w = math.log(epsilon / e0) / math.log(e1 / e0)
        return math.exp((1 - w) * math.log(self.learning_rates[e0]) + w * math.log(self.learning_rates[e1]))

    def config(self, epsilon: float, **overrides: Any) -> TrainConfig:
        """The recipe's run at ``epsilon``; ``overrides`` set anything else (seed, device, ...)."""
        return config_from_dict({**self.settings, "lr": self.lr(epsilon), "epsilon": epsilon, **overrides})

    def sweep(self, epsilons: Iterable[float], seeds: Iterable[int], *, nonprivate: bool = True, **overrides: Any) -> list[TrainConfig]:
        """One run per (epsilon, seed), plus the non-private baseline per seed."""
        budgets = list(epsilons) + ([math.inf] if nonprivate else [])
        return [self.config(e, seed=s, **overrides) for e in budgets for s in seeds]


RECIPES: dict[str, Recipe] = {
    "scatternet": Recipe(
        name="scatternet",
        description="ScatterNet + linear head, batch 1024, C = 0.1, 60 epochs, EMA 0.99",
        settings={"model": "scatternet", "epochs": 60, "batch_size": 1024, "max_grad_norm": 0.1,
                  "momentum": 0.9, "ema": 0.99},  # fmt: skip
        learning_rates={0.5: 0.5, 1.0: 1.0, 2.0: 2.0, 4.0: 4.0, 8.0: 4.0, math.inf: 0.05},
    ),
    "cnn": Recipe(
        name="cnn",
        description="Tramèr & Boneh's small CNN, batch 256, C = 1, 30 epochs (the previous default)",
        settings={"model": "cnn", "epochs": 30, "batch_size": 256, "max_grad_norm": 1.0, "momentum": 0.9},
        learning_rates={8.0: 0.1, math.inf: 0.1},
    ),
}


def sweep_recipes(names: Iterable[str], epsilons: Iterable[float], seeds: Iterable[int], **overrides: Any) -> list[TrainConfig]:
    """Every named recipe's sweep (``Recipe.sweep``), one after another, as the privacy-utility
    notebook trains them."""
    epsilons, seeds = list(epsilons), list(seeds)
    return [config for name in names for config in get_recipe(name).sweep(epsilons, seeds, **overrides)]


def get_recipe(name: str) -> Recipe:
    """A recipe by name; an unknown one is an error that lists the known."""
    _validate.one_of(RECIPES, recipe=name)
    return RECIPES[name]

