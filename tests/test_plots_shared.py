"""What every figure shares, read back from the matplotlib objects it draws: one epsilon axis
(each figure against epsilon is built from a table with epsilons 1, 2, 8 and non-private), one
seaborn theme, and no global matplotlib state."""

from __future__ import annotations

import math
import re

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.colors import to_rgba

from privkit import plots
from privkit.attacks.reconstruction import AttackResult
from privkit.plots.epsilon_axis import NONPRIVATE_TICK, EpsilonAxis

EPSILONS = (1.0, 2.0, 8.0, math.inf)
TICKS = [1.0, 2.0, 8.0, 32.0]  # non-private: two octaves right of the largest epsilon
LABELS = ["1", "2", "8", NONPRIVATE_TICK]
NONPRIVATE_VALUE = 0.77  # every table's non-private value, found at x = 32 in every figure


def _value(eps: float, k: int = 0) -> float:
    return NONPRIVATE_VALUE if math.isinf(eps) else 0.5 + 0.01 * eps + 0.001 * k


def utility() -> list:
    rows = [
        {
            "run_id": f"{e}-{s}",
            "seed": s,
            "epsilon_target": e,
            "epsilon_spent": e,
            "split": "test",
            "metric": "auc",
            "value": _value(e),
        }
        for e in EPSILONS
        for s in range(2)
    ]
    return plots.privacy_utility(pd.DataFrame(rows), metrics=["auc"]).axes


def risk() -> list:
    rows = [
        dict(epsilon=e, fpr=0.01, bound=b, tpr=_value(e, k))
        for e in EPSILONS
        for k, b in enumerate("ab")
    ]
    return plots.risk_curves(pd.DataFrame(rows)).axes


def tpr() -> list:
    v = [_value(e) for e in EPSILONS]
    table = pd.DataFrame(
        {
            "epsilon": EPSILONS,
            "tpr": v,
            "tpr_low": np.subtract(v, 0.01),
            "tpr_high": np.add(v, 0.01),
            "bound": 1.0,
        }
    )
    return plots.tpr_against_epsilon(table, fpr=0.001).axes


def audit() -> list:
    table = pd.DataFrame(
        {"epsilon": EPSILONS, "epsilon_lower_bound": [_value(e) for e in EPSILONS]}
    )
    return plots.audit_epsilons(table).axes


def subgroups() -> list:
    rows = [
        dict(
            kind=kind,
            group="pneumonia",
            reference="normal" if kind == "gap" else "",
            metric="accuracy",
            value=_value(e),
            ci_low=_value(e) - 0.05,
            ci_high=_value(e) + 0.05,
            epsilon_target=e,
        )
        for e in EPSILONS
        for kind in ("group", "gap")
    ]
    return plots.subgroup_gaps(pd.DataFrame(rows)).axes


def calibration() -> list:
    rows = [
        dict(seed=s, epsilon_target=e, calibration=c, metric=m, value=_value(e))
        for s in (0, 1)
        for e in EPSILONS
        for c in ("uncalibrated", "temperature")
        for m in ("ece", "brier")
    ]
    return plots.calibration_by_epsilon(pd.DataFrame(rows)).axes


def federated() -> list:
    rows = [
        dict(
            method=m,
            partition=p,
            n_sites=n,
            seed=s,
            epsilon_target=e,
            split="test",
            metric="auc",
            value=_value(e),
        )
        for m, p, n in [("centralised", "pooled", 1), ("fedavg", "iid", 3), ("cyclic", "iid", 3)]
        for e in EPSILONS
        for s in range(2)
    ]
    return plots.federated_comparison(pd.DataFrame(rows)).axes


EPSILON_FIGURES = [utility, risk, tpr, audit, subgroups, calibration, federated]


@pytest.mark.parametrize("figure", EPSILON_FIGURES, ids=lambda f: f.__name__)
def test_every_epsilon_axis_has_the_same_scale_ticks_and_limits(figure) -> None:
    for ax in figure():
        assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
        assert list(ax.get_xticks()) == TICKS
        assert [t.get_text() for t in ax.get_xticklabels()] == LABELS
        assert ax.xaxis.get_minorticklocs().size == 0
        assert ax.get_xlim() == pytest.approx((1 / 2**0.5, 32 * 2**0.5))
        (separator,) = [line for line in ax.get_lines() if list(line.get_ydata()) == [0, 1]]
        assert list(separator.get_xdata()) == [16.0, 16.0] and separator.get_linestyle() == ":"


@pytest.mark.parametrize("figure", EPSILON_FIGURES, ids=lambda f: f.__name__)
def test_non_private_results_are_lone_points_at_the_non_private_tick(figure) -> None:
    for ax in figure():
        points = [c.lines[0] for c in ax.containers if np.all(c.lines[0].get_xdata() > 16)]
        assert points, "no non-private point drawn"
        for point in points:
            assert point.get_linestyle() == "None" and point.get_marker() not in (None, "None", "")
            assert point.get_xdata() == pytest.approx([32.0], rel=0.1)  # side-by-side shifts only
        series = [c.lines[0] for c in ax.containers if np.all(c.lines[0].get_xdata() < 16)]
        colours = {to_rgba(line.get_color()) for line in series}  # each series' own colour
        assert {to_rgba(point.get_color()) for point in points} <= colours
        drawn = [y for point in points for y in point.get_ydata()]
        assert drawn == pytest.approx([NONPRIVATE_VALUE] * len(drawn))
        for line in ax.get_lines():  # and no horizontal line at it (another convention)
            spanning = list(line.get_xdata()) == [0, 1]
            assert not (spanning and line.get_ydata()[0] == pytest.approx(NONPRIVATE_VALUE))


def other_figures() -> list:
    """Every figure that has no epsilon axis, from small tables."""
    curve = pd.DataFrame(
        {
            "epoch": [1, 2, 1, 2],
            "accountant": ["prv", "prv", "rdp", "rdp"],
            "epsilon": [1.0, 1.5, 1.2, 1.8],
        }
    )
    spending = pd.DataFrame(
        {
            "scope": "dataset:p",
            "run": [1, 2],
            "composed": [1.0, 1.6],
            "basic": [1.0, 2.0],
            "budget": 1.8,
            "refused": [False, True],
        }
    )
    methods = pd.DataFrame(
        [dict(method=m, seed=s, metric="auc", value=0.9) for m in "ab" for s in (0, 1)]
    )
    fpr = np.linspace(0, 1, 11)
    scores = pd.DataFrame(
        {
            "label": [0, 1] * 10,
            "probability": np.linspace(0.05, 0.95, 20),
            "calibration": "uncalibrated",
        }
    )
    images = torch.zeros(2, 1, 8, 8)
    table = pd.DataFrame(
        [dict(defense="none", image=i, metric="psnr", value=1.0) for i in range(2)]
    )
    attack = AttackResult(images=images, reconstructions={"none": images}, table=table)
    return [
        plots.epsilon_over_training(curve),
        plots.budget_spending(spending),
        plots.individual_vs_uniform(methods),
        plots.roc_curves({"model": (fpr, np.sqrt(fpr))}),
        plots.reliability_diagrams({"model": scores}),
        plots.reconstruction_grid(attack),
    ]


def test_every_figure_wears_the_one_theme_and_concrete_colours() -> None:
    figures = [ax.figure for figure in EPSILON_FIGURES for ax in figure()[:1]] + other_figures()
    assert len(figures) == len(plots.__all__) - 1  # every figure function but save_figure
    for fig in figures:
        for ax in fig.axes:
            assert ax.spines["left"].get_edgecolor() == to_rgba(".8")  # seaborn whitegrid
            assert ax.xaxis.label.get_fontsize() == 12  # seaborn notebook context
            for line in ax.get_lines():  # "C0" would take its colour from whoever draws it
                assert not re.fullmatch(r"C\d+", str(line.get_color()))


def test_figures_leave_global_matplotlib_state_alone() -> None:
    before, open_figures = dict(matplotlib.rcParams), plt.get_fignums()
    for figure in EPSILON_FIGURES:
        figure()
    other_figures()
    assert dict(matplotlib.rcParams) == before
    assert plt.get_fignums() == open_figures


def test_epsilon_axis_refuses_epsilons_it_cannot_place() -> None:
    with pytest.raises(ValueError, match=r"every epsilon > 0 .*got -1, 0, nan"):
        EpsilonAxis.of([1.0, 0.0, -1.0, float("nan")])
    with pytest.raises(ValueError, match="at least one epsilon"):
        EpsilonAxis.of([])
    only = EpsilonAxis.of([math.inf])  # a non-private table alone still has an axis
    assert only.ticks() == [4.0] and only.labels() == [NONPRIVATE_TICK]
