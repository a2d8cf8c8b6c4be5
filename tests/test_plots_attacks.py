"""Figures of attacks and audits: axes, scales and the input they refuse."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from privkit import plots
from privkit.plots.epsilon_axis import NONPRIVATE_TICK


def test_tpr_against_epsilon_draws_points_bound_and_baselines():
    table = pd.DataFrame(
        {
            "epsilon": [1.0, 8.0, math.inf],
            "tpr": [0.0, 0.002, 0.02],
            "tpr_low": [0.0, 0.001, 0.015],
            "tpr_high": [0.002, 0.004, 0.027],
            "bound": [0.0024, 0.06, 1.0],
        }
    )
    ax = plots.tpr_against_epsilon(table, fpr=0.001).axes[0]
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "8", NONPRIVATE_TICK]
    bound, private, nonprivate = (c.lines[0] for c in ax.containers)
    assert list(bound.get_ydata()) == [0.0024, 0.06]  # the private settings only
    # TPR 0 is drawn at FPR / 10 on the log axis; the non-private model at its own tick, 8 * 4.
    assert list(private.get_xydata().tolist()) == [[1.0, 0.0001], [8.0, 0.002]]
    assert (
        nonprivate.get_xydata().tolist() == [[32.0, 0.02]] and nonprivate.get_linestyle() == "None"
    )
    ((low, high),) = [seg[:, 1] for seg in ax.containers[2].lines[2][0].get_segments()]
    assert (low, high) == (pytest.approx(0.015), pytest.approx(0.027))  # its 95% interval
    spanning = [line for line in ax.get_lines() if list(line.get_xdata()) == [0, 1]]  # axhline
    assert [line.get_ydata()[0] for line in spanning] == [0.001]  # random guess only
    with pytest.raises(ValueError, match="bound"):
        plots.tpr_against_epsilon(table.drop(columns="bound"), fpr=0.001)


def test_roc_curves_drop_fpr_zero_on_log_axes():
    fig = plots.roc_curves({"a": (np.array([0.0, 0.01, 1.0]), np.array([0.1, 0.2, 1.0]))})
    line = fig.axes[0].get_lines()[1]
    assert list(line.get_xdata()) == [0.01, 1.0]


def test_audit_epsilons_diagonal_and_points():
    table = pd.DataFrame({"epsilon": [1.0, 4.0, math.inf], "epsilon_lower_bound": [0.1, 0.5, 2.0]})
    ax = plots.audit_epsilons(table).axes[0]
    diagonal = ax.get_lines()[0]
    assert list(diagonal.get_xdata()) == list(diagonal.get_ydata())  # the accountant's y = x
    assert max(diagonal.get_xdata()) == pytest.approx(4.0)
    private, nonprivate = (c.lines[0] for c in ax.containers)
    assert private.get_xydata().tolist() == [[1.0, 0.1], [4.0, 0.5]]
    assert nonprivate.get_xydata().tolist() == [[16.0, 2.0]]  # at the non-private tick, 4 * 4
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "4", NONPRIVATE_TICK]
    with pytest.raises(ValueError, match="epsilon_lower_bound"):
        plots.audit_epsilons(table.drop(columns="epsilon_lower_bound"))
