"""The epsilon explorer: what a privacy budget buys, for a data protection officer or a student.

:func:`what_epsilon_buys` is the computation, pure and testable without a browser: for one
(epsilon, delta, batch size, epochs) it plans the run as training would (:func:`privkit.train.plan`:
the noise multiplier from :func:`privkit.mechanism.plan`), looks up the recipe's
measured test AUC at that epsilon (:meth:`privkit.recipes.Recipe.auc`, the README's table), and
bounds what an attacker can do from the mechanism itself (:mod:`privkit.risk`): the highest
membership-inference TPR at FPR 0.1% and 1%, and the chance of reconstructing a training X-ray.
:func:`explorer` puts sliders in front of it (ipywidgets, in JupyterLab).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any

import ipywidgets as w

from privkit import risk
from privkit._validate import in_range, positive, positive_int
from privkit.mechanism import Mechanism
from privkit.recipes import MeasuredAUC, get_recipe
from privkit.risk import _pct  # percentages rounded up: a stated cap must not understate
from privkit.train import plan

FPRS: tuple[float, ...] = (0.001, 0.01)  # the false-positive rates the explorer reports
EPSILONS: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)
DELTAS: tuple[float, ...] = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3)


@dataclass(frozen=True)
class WhatEpsilonBuys:
    """One point of the explorer: the run planned at a budget, its measured utility, its risks."""

    recipe: str
    n_train: int
    batch_size: int
    epochs: int
    mechanism: Mechanism  # noise_multiplier, sample_rate, steps, and the epsilon actually spent
    auc: (
        MeasuredAUC | None
    )  # the recipe's measured test AUC at the target epsilon; None: not measured
    recipe_settings: bool  # batch size and epochs are the recipe's, those its AUC was measured with
    tpr_bounds: dict[float, float]  # FPR -> the highest TPR of any membership-inference attack
    reconstruction_prior: float  # the attacker's chance of rebuilding an X-ray without the model
    reconstruction_bound: float  # ... and the highest chance with it


def what_epsilon_buys(
    *,
    epsilon: float,
    delta: float,
    n_train: int,
    batch_size: int | None = None,
    epochs: int | None = None,
    recipe: str = "scatternet",
    prior: float | None = None,
) -> WhatEpsilonBuys:
    """The noise, measured utility and attack bounds of training ``recipe`` at (epsilon, delta).

    Args:
        epsilon: Target epsilon, > 0 and finite. delta: Target delta, below ``1 / n_train``.
        n_train: Number of training X-rays.
        batch_size, epochs: Expected Poisson batch size and epochs; None: the recipe's own.
        recipe: A name in :data:`privkit.recipes.RECIPES`; its settings plan the run and its
            measured AUC is reported.
        prior: The reconstruction attacker's chance without the model (Hayes, Mahloujifar &
            Balle 2023); None: ``1 / n_train``, picking the right X-ray among the training set.

    Returns:
        A :class:`WhatEpsilonBuys`. Its bounds come from the whole privacy profile of the
        mechanism (:func:`privkit.risk.tpr_bound_mechanism`), tighter than (epsilon, delta) alone.

    Raises:
        ValueError: If an argument is out of range (the message names it).

    >>> view = what_epsilon_buys(epsilon=8.0, delta=1e-5, n_train=4708)
    >>> view.auc.auc, view.mechanism.steps
    (0.972, 300)
    """
    in_range(0, math.inf, low_inclusive=False, high_inclusive=False, epsilon=epsilon)
    positive_int(n_train=n_train)
    recipe_ = get_recipe(recipe)
    batch_size = recipe_.settings["batch_size"] if batch_size is None else batch_size
    epochs = recipe_.settings["epochs"] if epochs is None else epochs
    positive_int(batch_size=batch_size)
    positive_int(epochs=epochs)
    prior = 1 / n_train if prior is None else positive(prior=prior)
    mechanism = plan(
        recipe_.config(epsilon, delta=delta, batch_size=batch_size, epochs=epochs), n_train
    )
    mech = {
        "noise_multiplier": mechanism.noise_multiplier,
        "sample_rate": mechanism.sample_rate,
        "steps": mechanism.steps,
    }
    bounds = risk.tpr_bound_mechanism(list(FPRS), **mech)
    return WhatEpsilonBuys(
        recipe=recipe,
        n_train=n_train,
        batch_size=batch_size,
        epochs=epochs,
        mechanism=mechanism,
        auc=recipe_.auc(epsilon),
        recipe_settings=(batch_size, epochs)
        == (recipe_.settings["batch_size"], recipe_.settings["epochs"]),
        tpr_bounds={fpr: float(b) for fpr, b in zip(FPRS, bounds)},
        reconstruction_prior=prior,
        reconstruction_bound=risk.reconstruction_bound(prior=prior, **mech),
    )


def _auc_text(view: WhatEpsilonBuys) -> str:
    recipe = get_recipe(view.recipe)
    if view.auc is None:
        lo, hi = min(recipe.measured_auc), max(e for e in recipe.measured_auc if math.isfinite(e))
        return f"not measured at this ε (measured from {lo:g} to {hi:g})"
    at = ", ".join(f"{mean:.3f} ± {sd:.3f} at ε = {e:g}" for e, mean, sd in view.auc.measured)
    how = f"interpolated between {at}" if view.auc.interpolated else f"measured: {at}"
    note = (
        ""
        if view.recipe_settings
        else "; measured with the recipe's own batch size and epochs, not these"
    )
    return (
        f"<b>{view.auc.auc:.3f}</b><br><small>{how}; real PneumoniaMNIST, δ = 1e-5, seeds 0-2 "
        f"(README){note}</small>"
    )


def html_summary(view: WhatEpsilonBuys) -> str:
    """The view as four cards side by side (wrapping on a narrow page), in HTML."""
    m = view.mechanism
    spent = math.ceil(m.epsilon * 100) / 100  # rounded up, as the bounds
    cards = [
        (
            "noise multiplier σ",
            f"<b>{m.noise_multiplier:.3g}</b><br><small>{m.steps} steps at sampling rate "
            f"{m.sample_rate:.3g}; ε spent ≤ {spent:g}</small>",
        ),
        (f"test AUC of the {view.recipe} recipe", _auc_text(view)),
        (
            "membership inference: highest TPR",
            "<br>".join(f"<b>{_pct(b)}</b> at FPR {100 * f:g}%" for f, b in view.tpr_bounds.items())
            + "<br><small>any attack; guessing gets TPR = FPR</small>",
        ),
        (
            "reconstructing an X-ray: highest chance",
            f"<b>{_pct(view.reconstruction_bound)}</b><br><small>for an attacker right 1 time in "
            f"{1 / view.reconstruction_prior:,.0f} without the model</small>",
        ),
    ]
    body = "".join(
        f'<div class="privkit-card" style="flex:1 1 12em;min-width:12em;padding:0.4em 0.8em;'
        f'border:1px solid #ccc;border-radius:4px"><div>{html.escape(title)}</div>{text}</div>'
        for title, text in cards
    )
    return f'<div class="privkit-explorer-result" style="display:flex;flex-wrap:wrap;gap:0.6em">{body}</div>'


class Explorer(w.VBox):
    """The explorer's box; it also carries an HTML snapshot of its current view, which pages
    without a live kernel (the course site) show instead of the sliders."""

    def __init__(self, children: list[w.Widget], view: WhatEpsilonBuys) -> None:
        super().__init__(children)
        self.view = view

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        return {**super()._repr_mimebundle_(**kwargs), "text/html": html_summary(self.view)}


def explorer(
    *,
    n_train: int,
    epsilon: float = 1.0,
    delta: float = 1e-5,
    batch_size: int | None = None,
    epochs: int | None = None,
    recipe: str = "scatternet",
) -> Explorer:
    """Sliders for epsilon, delta, batch size and epochs over :func:`what_epsilon_buys`.

    Show it as the last expression of a notebook cell; each slider, once released, replans
    the run in the kernel and updates the four numbers.
    """
    first = what_epsilon_buys(
        epsilon=epsilon,
        delta=delta,
        n_train=n_train,
        batch_size=batch_size,
        epochs=epochs,
        recipe=recipe,
    )
    sizes = sorted({2**k for k in range(4, 16) if 2**k <= n_train} | {first.batch_size})
    epsilons = sorted(set(EPSILONS) | {epsilon})
    deltas = sorted({d for d in DELTAS if d < 1 / n_train} | {delta})
    sliders = {
        "epsilon": w.SelectionSlider(options=epsilons, value=epsilon, description="ε"),
        "delta": w.SelectionSlider(options=deltas, value=delta, description="δ"),
        "batch_size": w.SelectionSlider(
            options=sizes, value=first.batch_size, description="batch size"
        ),
        "epochs": w.IntSlider(
            value=first.epochs, min=1, max=max(100, first.epochs), description="epochs"
        ),
    }
    for slider in sliders.values():
        slider.continuous_update = False
        slider.style.description_width = "initial"
    result = w.HTML(html_summary(first))
    box = Explorer(
        [w.HBox(list(sliders.values()), layout=w.Layout(flex_flow="row wrap")), result], first
    )
    box.add_class("privkit-explorer")

    def update(_: Any) -> None:
        values = {k: s.value for k, s in sliders.items()}
        try:
            box.view = what_epsilon_buys(recipe=recipe, n_train=n_train, **values)
        except (ValueError, RuntimeError) as err:  # a setting the accountant cannot plan: say why
            result.value = f"<b>{html.escape(str(err))}</b>"
        else:
            result.value = html_summary(box.view)

    for slider in sliders.values():
        slider.observe(update, names="value")
    return box
