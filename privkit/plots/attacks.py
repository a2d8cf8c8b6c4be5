"""Figures of attacks and audits: log-log ROC curves, attack success against epsilon, audits.

Built on ``matplotlib.figure.Figure`` (no pyplot); save them with
:func:`privkit.plots.save_figure`. Inputs are plain arrays or tidy tables, never models.

>>> import numpy as np
>>> fig = roc_curves({"non-private": (np.array([0, 0.001, 1]), np.array([0, 0.02, 1]))})
>>> ax = fig.axes[0]
>>> ax.get_xscale(), ax.get_yscale(), ax.get_xlabel()
('log', 'log', 'false-positive rate (non-members accused)')
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from privkit.plots._figure import new_figure, palette, require_columns, theme
from privkit.plots.epsilon_axis import EpsilonAxis, plot_series

FPR_LABEL = "false-positive rate (non-members accused)"
TPR_LABEL = "true-positive rate (members found)"


def roc_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    min_fpr: float = 1e-4,
    title: str = "Membership inference ROC (log-log)",
    ax: Axes | None = None,
) -> Figure:
    """ROC curves on log-log axes, the way the field reads them (Carlini et al. 2022, Fig. 1).

    Args:
        curves: label -> (fpr, tpr) arrays, e.g. from :func:`privkit.attacks.scores.roc_curve`.
        min_fpr: left end of the x axis (about 1 / number of non-members is the last
            resolvable FPR).
        title: the axes title.
        ax: draw into these axes instead of a new figure.
    """
    with theme():
        fig, [ax] = new_figure(1, (4.8, 4.2), ax=ax)
        grid = np.logspace(math.log10(min_fpr), 0, 50)
        ax.plot(grid, grid, ls="--", color="0.5", lw=1, label="random guess (TPR = FPR)")
        for label, (fpr, tpr) in curves.items():
            fpr, tpr = np.asarray(fpr), np.asarray(tpr)
            keep = fpr > 0  # the log axis cannot show FPR 0
            ax.plot(fpr[keep], np.maximum(tpr[keep], min_fpr / 10), lw=1.5, label=label)
        ax.set(xscale="log", yscale="log", xlim=(min_fpr, 1), ylim=(min_fpr, 1.05))
        ax.set(xlabel=FPR_LABEL, ylabel=TPR_LABEL, title=title)
        ax.legend(loc="lower right", fontsize="small")
    return fig


def tpr_against_epsilon(
    table: pd.DataFrame,
    *,
    fpr: float,
    ax: Axes | None = None,
) -> Figure:
    """Attack TPR at one FPR against epsilon, with its confidence interval and the DP bound.

    On the epsilon axis of :mod:`privkit.plots.epsilon_axis`: the non-private model's TPR and
    interval at the "non-private" position, where DP bounds nothing.

    Args:
        table: one row per model setting with columns ``epsilon`` (``inf`` for non-private),
            ``tpr``, ``tpr_low``, ``tpr_high`` and ``bound`` (the highest TPR DP allows at
            this FPR, e.g. :func:`privkit.risk.tpr_bound_mechanism`).
        fpr: the FPR the TPRs were read at (drawn as the random-guess level).
        ax: draw into these axes instead of a new figure.
    """
    require_columns(table, ("epsilon", "tpr", "tpr_low", "tpr_high", "bound"))
    rows = table.astype({"epsilon": float})
    axis = EpsilonAxis.of(rows["epsilon"])
    private = rows[np.isfinite(rows["epsilon"])]
    floor = fpr / 10  # a TPR of 0 still needs a place on the log axis
    with theme():
        new = ax is None
        fig, [ax] = new_figure(1, (5.2, 4.6), ax=ax)
        if len(private):
            plot_series(
                ax,
                axis,
                private["epsilon"],
                private["bound"],
                color=palette(3),
                marker="_",
                markersize=12,
                label="DP bound (highest TPR any attack can reach)",
            )
        y = np.maximum(rows["tpr"], floor)
        plot_series(
            ax,
            axis,
            rows["epsilon"],
            y,
            low=np.maximum(rows["tpr_low"], floor),
            high=rows["tpr_high"],
            color=palette(0),
            linestyle="none",
            label=f"attack TPR, 95% interval (0 drawn at {floor:g})",
        )
        ax.axhline(fpr, ls="--", color="0.5", lw=1, label=f"random guess (TPR = FPR = {fpr:g})")
        ax.set_yscale("log")
        axis.draw(ax)
        ax.set(ylabel=f"TPR at FPR {fpr:g}", title=f"Membership inference at FPR {fpr:g}")
        if new:  # below the figure, where it hides no point
            fig.legend(loc="outside lower center", fontsize="small", frameon=False)
        else:
            ax.legend(loc="best", fontsize="small")
    return fig


def audit_epsilons(table: pd.DataFrame, *, ax: Axes | None = None) -> Figure:
    """Empirical epsilon lower bounds of an audit against the accountant's epsilon.

    The accountant's epsilon is on the epsilon axis of :mod:`privkit.plots.epsilon_axis` (the
    non-private run at its "non-private" position); the lower bounds on a linear axis that shows
    a bound of 0. The line y = x is the accountant's upper bound.

    Args:
        table: one row per audited run with columns ``epsilon`` (the accountant's; ``inf``
            for non-private) and ``epsilon_lower_bound``. Every private point must lie below
            y = x: a point above it means the implementation leaks more than it claims.
        ax: draw into these axes instead of a new figure.
    """
    require_columns(table, ("epsilon", "epsilon_lower_bound"))
    rows = table.astype({"epsilon": float, "epsilon_lower_bound": float})
    axis = EpsilonAxis.of(rows["epsilon"])
    top = max([1.0, *axis.epsilons, *rows["epsilon_lower_bound"]]) * 1.1
    with theme():
        fig, [ax] = new_figure(1, (4.8, 4.2), ax=ax)
        if axis.epsilons:  # y = x, sampled densely: a curve on the log epsilon axis
            x = np.geomspace(axis.epsilons[0] / 2**0.5, axis.epsilons[-1], 100)
            ax.plot(x, x, "--", color=palette(3), lw=1, label="accountant's ε (upper bound)")
        plot_series(
            ax,
            axis,
            rows["epsilon"],
            rows["epsilon_lower_bound"],
            color=palette(0),
            linestyle="none",
            label="audit's lower bound (95%)",
        )
        axis.draw(ax, label="accountant's ε (log scale)")
        ax.set(ylim=(-0.03 * top, top), ylabel="empirical ε lower bound")
        ax.set_title("Privacy audit (one training run)")
        ax.legend(loc="upper left", fontsize="small")
    return fig
