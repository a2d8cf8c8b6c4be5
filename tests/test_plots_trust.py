"""Fairness and calibration figures, read back from the matplotlib objects they draw."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from privkit import plots
from privkit.plots.epsilon_axis import NONPRIVATE_TICK


def _subgroups():
    rows = []
    for eps, normal, pneu in [(1.0, 0.55, 0.97), (8.0, 0.65, 0.96), (math.inf, 0.70, 0.95)]:
        for group, v in (("normal", normal), ("pneumonia", pneu)):
            rows.append(
                {
                    "kind": "group",
                    "group": group,
                    "reference": "",
                    "metric": "accuracy",
                    "value": v,
                    "ci_low": v - 0.05,
                    "ci_high": v + 0.03,
                    "epsilon_target": eps,
                }
            )
        rows.append(
            {
                "kind": "gap",
                "group": "pneumonia",
                "reference": "normal",
                "metric": "accuracy",
                "value": pneu - normal,
                "ci_low": pneu - normal - 0.06,
                "ci_high": pneu - normal + 0.06,
                "epsilon_target": eps,
            }
        )
    return pd.DataFrame(rows)


def test_subgroup_gaps_draws_values_and_intervals_at_their_epsilons():
    fig = plots.subgroup_gaps(_subgroups())
    left, right = fig.axes
    labelled = [
        c for c in left.containers if c.get_label() in ("normal", "pneumonia")
    ]  # eps 1 and 8
    ys = sorted(tuple(np.round(c.lines[0].get_ydata(), 3)) for c in labelled)
    assert ys == [(0.55, 0.65), (0.97, 0.96)]
    assert [t.get_text() for t in right.get_xticklabels()] == ["1", "8", NONPRIVATE_TICK]
    assert "gap" in right.get_ylabel()
    caps = [
        c for c in right.collections if len(c.get_segments())
    ]  # error bars: (low, high) segments
    spans = sorted(round(s[1][1] - s[0][1], 3) for c in caps for s in c.get_segments())
    assert spans.count(0.12) == 3  # each gap's CI is drawn from ci_low to ci_high


def test_calibration_by_epsilon_draws_seed_means():
    rows = [
        {"seed": s, "epsilon_target": e, "calibration": c, "metric": m, "value": v + 0.01 * s}
        for s in (0, 1)
        for e in (1.0, math.inf)
        for c, v in (("uncalibrated", 0.1), ("temperature", 0.05))
        for m in ("ece", "brier")
    ]
    fig = plots.calibration_by_epsilon(pd.DataFrame(rows))
    ys = {
        round(float(line.get_ydata()[0]), 3)
        for line in fig.axes[0].get_lines()
        if len(line.get_ydata())
    }
    assert {0.105, 0.055} <= ys
    with pytest.raises(ValueError, match="nll"):
        plots.calibration_by_epsilon(pd.DataFrame(rows), metrics=["nll"])


def test_reliability_diagram_puts_each_bin_at_its_confidence_and_accuracy():
    p = np.r_[np.full(10, 0.9), np.full(10, 0.3)]
    y = np.r_[np.ones(7), np.zeros(3), np.ones(5), np.zeros(5)].astype(int)
    rows = pd.DataFrame({"label": y, "probability": p, "calibration": "uncalibrated"})
    fig = plots.reliability_diagrams({"model": rows})
    (ax,) = fig.axes
    series = [line for line in ax.get_lines() if line.get_label().startswith("uncalibrated")]
    assert np.round(series[0].get_xydata(), 3).tolist() == [[0.7, 0.5], [0.9, 0.7]]
    assert "ECE 0.200" in series[0].get_label()
