"""Budget figures: what is drawn matches the table, and bad tables name what is missing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from privkit import plots


def test_budget_spending_draws_each_scope_and_marks_refusals() -> None:
    table = pd.DataFrame(
        {
            "scope": ["dataset:p"] * 3 + ["dataset:p/institution:A"] * 2,
            "run": [1, 2, 3, 1, 2],
            "composed": [1.0, 1.6, 1.6, 0.8, 0.8],
            "basic": [1.0, 2.0, 2.0, 0.8, 0.8],
            "budget": [2.0, 2.0, 2.0, 1.0, 1.0],
            "refused": [False, False, True, False, True],
        }
    )
    fig = plots.budget_spending(table)
    assert [ax.get_title() for ax in fig.axes] == ["dataset p", "institution A"]
    spent = fig.axes[0].lines[0]
    assert list(spent.get_xdata()) == [1, 2] and list(spent.get_ydata()) == [
        1.0,
        1.6,
    ]  # refused run adds nothing
    [refused] = fig.axes[0].collections
    assert refused.get_offsets().tolist() == [[3.0, 2.0]]


def test_risk_curves_one_panel_per_fpr_on_log_axes() -> None:
    table = pd.DataFrame(
        [
            dict(epsilon=e, fpr=f, bound=b, tpr=min(1.0, f * np.exp(e)))
            for e in (0.5, 1, 8)
            for f in (0.001, 0.01)
            for b in ("a", "b")
        ]
    )
    fig = plots.risk_curves(table)
    assert [ax.get_title() for ax in fig.axes] == ["at FPR = 0.1%", "at FPR = 1.0%"]
    assert fig.axes[0].get_xscale() == "log" == fig.axes[0].get_yscale()
    assert list(fig.axes[0].lines[0].get_xdata()) == [0.5, 1, 8]
    fig.canvas.draw()  # tick labels are the epsilons, not overlapping minor log labels
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0.5", "1", "8"]


def test_individual_vs_uniform_keeps_the_method_order() -> None:
    table = pd.DataFrame(
        [
            dict(method=m, seed=s, metric="auc", value=0.9 + 0.01 * s)
            for m in ("strict", "individual", "loose")
            for s in range(2)
        ]
    )
    fig = plots.individual_vs_uniform(table)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [
        "strict",
        "individual",
        "loose",
    ]
    with pytest.raises(ValueError, match="metric='accuracy'"):
        plots.individual_vs_uniform(table, metric="accuracy")


def test_missing_columns_are_named() -> None:
    with pytest.raises(ValueError, match="missing: accountant"):
        plots.epsilon_over_training(pd.DataFrame({"epoch": [1], "epsilon": [1.0]}))
    with pytest.raises(ValueError, match="empty"):
        plots.risk_curves(pd.DataFrame(columns=["epsilon", "fpr", "bound", "tpr"]))
