"""Figures of attacks and audits: log-log ROC curves, attack success against epsilon, audits.

Built on ``matplotlib.figure.Figure`` (no pyplot), like :mod:`privkit.plots`; save them with
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
from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

FPR_LABEL = "false-positive rate (non-members accused)"
TPR_LABEL = "true-positive rate (members found)"


def _axes(ax: Axes | None, size: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots()


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
    fig, ax = _axes(ax, (4.8, 4.2))
    grid = np.logspace(math.log10(min_fpr), 0, 50)
    ax.plot(grid, grid, ls="--", color="0.5", lw=1, label="random guess (TPR = FPR)")
    for label, (fpr, tpr) in curves.items():
        fpr, tpr = np.asarray(fpr), np.asarray(tpr)
        keep = fpr > 0  # the log axis cannot show FPR 0
        ax.plot(fpr[keep], np.maximum(tpr[keep], min_fpr / 10), lw=1.5, label=label)
    ax.set(xscale="log", yscale="log", xlim=(min_fpr, 1), ylim=(min_fpr, 1.05),
           xlabel=FPR_LABEL, ylabel=TPR_LABEL, title=title)
    ax.legend(loc="lower right", fontsize="small")
    return fig


def tpr_against_epsilon(
    table: pd.DataFrame,
    *,
    fpr: float,
    ax: Axes | None = None,
) -> Figure:
    """Attack TPR at one FPR against epsilon, with its confidence interval and the DP bound.

    Args:
        table: one row per model setting with columns ``epsilon`` (``inf`` for non-private),
            ``tpr``, ``tpr_low``, ``tpr_high`` and ``bound`` (the highest TPR DP allows at
            this FPR, e.g. :func:`privkit.risk.tpr_bound_mechanism`).
        fpr: the FPR the TPRs were read at (drawn as the random-guess level).
        ax: draw into these axes instead of a new figure.
    """
    missing = {"epsilon", "tpr", "tpr_low", "tpr_high", "bound"} - set(table.columns)
    if missing:
        raise ValueError(f"Expected table columns {sorted(missing)} as well.")
    fig, ax = _axes(ax, (5.2, 4.6))
    rows = table.sort_values("epsilon")
    private = rows[np.isfinite(rows["epsilon"].astype(float))]
    floor = fpr / 10  # a TPR of 0 still needs a place on the log axis
    if len(private):
        ax.plot(private["epsilon"], private["bound"], "-", color="C3", marker="_", ms=12,
                label="DP bound (highest TPR any attack can reach)")
        y = np.maximum(private["tpr"], floor)
        err = [y - np.maximum(private["tpr_low"], floor), private["tpr_high"] - y]
        ax.errorbar(private["epsilon"], y, yerr=err, fmt="o", color="C0", capsize=3,
                    label=f"attack TPR, 95% interval (0 drawn at {floor:g})")
        ticks = sorted(set(private["epsilon"].astype(float)))
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FixedFormatter([f"{t:g}" for t in ticks]))
        ax.xaxis.set_minor_locator(NullLocator())
    ax.axhline(fpr, ls="--", color="0.5", lw=1, label=f"random guess (TPR = FPR = {fpr:g})")
    nonprivate = rows[~np.isfinite(rows["epsilon"].astype(float))]
    if len(nonprivate):
        ax.axhline(float(nonprivate["tpr"].iloc[0]), color="0.25", ls=":",
                   label="attack TPR, non-private model")
    ax.set(yscale="log", xlabel="privacy budget ε (log scale)", ylabel=f"TPR at FPR {fpr:g}",
           title=f"Membership inference at FPR {fpr:g}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize="small", ncol=1)
    return fig


def audit_epsilons(table: pd.DataFrame, *, ax: Axes | None = None) -> Figure:
    """Empirical epsilon lower bounds of an audit against the accountant's epsilon.

    Args:
        table: one row per audited run with columns ``epsilon`` (the accountant's; ``inf``
            for non-private) and ``epsilon_lower_bound``. Every private point must lie below
            the diagonal: a point above it means the implementation leaks more than it claims.
        ax: draw into these axes instead of a new figure.
    """
    missing = {"epsilon", "epsilon_lower_bound"} - set(table.columns)
    if missing:
        raise ValueError(f"Expected table columns {sorted(missing)} as well.")
    fig, ax = _axes(ax, (4.8, 4.2))
    eps = table["epsilon"].astype(float)
    private = table[np.isfinite(eps)]
    top = max([1.0, *private["epsilon"], *table["epsilon_lower_bound"]]) * 1.1
    ax.plot([0, top], [0, top], "--", color="C3", lw=1, label="accountant's ε (upper bound)")
    ax.plot(private["epsilon"], private["epsilon_lower_bound"], "o", color="C0",
            label="audit's lower bound (95%)")
    for value in table.loc[~np.isfinite(eps), "epsilon_lower_bound"]:
        ax.axhline(value, color="0.25", ls=":", label="lower bound, non-private model")
    ax.set(xlim=(0, top), ylim=(-0.03 * top, top), xlabel="accountant's ε",
           ylabel="empirical ε lower bound", title="Privacy audit (one training run)")
    ax.legend(loc="upper left", fontsize="small")
    return fig
