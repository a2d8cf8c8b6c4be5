"""Figures of attacks and audits: axes, scales and the input they refuse."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from privkit import plots_attacks


def test_tpr_against_epsilon_draws_points_bound_and_baselines():
    table = pd.DataFrame({
        "epsilon": [1.0, 8.0, math.inf], "tpr": [0.0, 0.002, 0.02], "tpr_low": [0.0, 0.001, 0.015],
        "tpr_high": [0.002, 0.004, 0.027], "bound": [0.0024, 0.06, 1.0],
    })  # fmt: skip
    ax = plots_attacks.tpr_against_epsilon(table, fpr=0.001).axes[0]
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "8"]
    bound = ax.get_lines()[0]
    assert list(bound.get_ydata()) == [0.0024, 0.06]  # the private settings only
    horizontal = sorted(line.get_ydata()[0] for line in ax.get_lines()[1:] if len(set(line.get_ydata())) == 1)
    assert 0.001 in horizontal and 0.02 in horizontal  # random guess, non-private attack
    with pytest.raises(ValueError, match="bound"):
        plots_attacks.tpr_against_epsilon(table.drop(columns="bound"), fpr=0.001)


def test_roc_curves_drop_fpr_zero_on_log_axes():
    fig = plots_attacks.roc_curves({"a": (np.array([0.0, 0.01, 1.0]), np.array([0.1, 0.2, 1.0]))})
    line = fig.axes[0].get_lines()[1]
    assert list(line.get_xdata()) == [0.01, 1.0]


def test_audit_epsilons_diagonal_and_points():
    table = pd.DataFrame({"epsilon": [1.0, 4.0, math.inf], "epsilon_lower_bound": [0.1, 0.5, 2.0]})
    ax = plots_attacks.audit_epsilons(table).axes[0]
    diagonal, points = ax.get_lines()[:2]
    assert list(diagonal.get_xdata()) == list(diagonal.get_ydata())
    assert list(points.get_ydata()) == [0.1, 0.5]
    with pytest.raises(ValueError, match="epsilon_lower_bound"):
        plots_attacks.audit_epsilons(table.drop(columns="epsilon_lower_bound"))
