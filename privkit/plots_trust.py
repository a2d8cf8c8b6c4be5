"""Figures of fairness and calibration against the privacy budget, and reliability diagrams.

Built on ``matplotlib.figure.Figure`` (no pyplot), from the tables of ``privkit.trust``. The
non-private model is drawn as one more position on the epsilon axis, right of the others and
set off by a dotted line, so that its confidence interval shows like the private ones'.

>>> import pandas as pd
>>> rows = [{"kind": "group", "group": g, "reference": "", "metric": "accuracy", "value": v,
...          "ci_low": v - 0.05, "ci_high": v + 0.05, "epsilon_target": e}
...         for e in (1.0, 8.0, float("inf")) for g, v in (("normal", 0.6), ("pneumonia", 0.95))]
>>> rows += [{"kind": "gap", "group": "pneumonia", "reference": "normal", "metric": "accuracy",
...           "value": 0.35, "ci_low": 0.3, "ci_high": 0.4, "epsilon_target": e} for e in (1.0, 8.0, float("inf"))]
>>> fig = subgroup_gaps(pd.DataFrame(rows))
>>> [t.get_text() for t in fig.axes[0].get_xticklabels()]
['1', '8', 'non-\\nprivate']
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from privkit import calibration
from privkit.plots import X_LABEL

CALIBRATION_LABELS = {
    "uncalibrated": "uncalibrated",
    "temperature": "temperature scaled (val, not private)",
    "temperature_dp": "temperature scaled (val, DP)",
}
METRIC_LABELS = {
    "accuracy": "recall of the class\n(accuracy within the group)",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "auc": "ROC AUC",
    "ece": "expected calibration error\n(15 equal-width bins)",
    "ece_equal_mass": "ECE (15 equal-mass bins)",
    "brier": "Brier score",
    "nll": "negative log-likelihood",
}


def _positions(epsilons: Sequence[float]) -> dict[float, float]:
    """x position of each epsilon on a log-2 axis; non-private (inf) one step past the largest."""
    finite = sorted(e for e in set(epsilons) if math.isfinite(e))
    where = {e: e for e in finite}
    if any(math.isinf(e) for e in epsilons):
        where[math.inf] = (max(finite) if finite else 1.0) * 4
    return where


def _epsilon_axis(ax: Axes, where: dict[float, float]) -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted(where.values())
    ax.set_xticks(ticks, [("non-\nprivate" if math.isinf(e) else f"{e:g}") for e in sorted(where)])
    ax.minorticks_off()
    ax.set_xlim(min(ticks) / 2**0.5, max(ticks) * 2**0.5)
    if math.inf in where and len(where) > 1:
        finite_max = max(v for e, v in where.items() if math.isfinite(e))
        ax.axvline(math.sqrt(finite_max * where[math.inf]), color="0.6", linestyle=":", linewidth=1)
    ax.set_xlabel(X_LABEL)


def _errorbar(ax: Axes, rows: pd.DataFrame, where: dict[float, float], *, label: str, color: str,
              shift: float = 1.0, marker: str = "o") -> None:  # fmt: skip
    rows = rows.sort_values("epsilon_target")
    x = np.array([where[e] for e in rows["epsilon_target"]]) * shift
    y = rows["value"].to_numpy(float)
    err = np.vstack([y - rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float) - y])
    finite = np.isfinite(rows["epsilon_target"].to_numpy(float))
    ax.errorbar(x[finite], y[finite], yerr=err[:, finite], color=color, marker=marker, capsize=3,
                linewidth=1.8, label=label)  # fmt: skip
    if (~finite).any():
        ax.errorbar(x[~finite], y[~finite], yerr=err[:, ~finite], color=color, marker=marker,
                    capsize=3, linestyle="none")  # fmt: skip


def subgroup_gaps(
    table: pd.DataFrame, *, metric: str = "accuracy", confidence: float = 0.95, panel_size=(4.8, 3.8)
) -> Figure:
    """Per-group ``metric`` and the gap to the reference group, against epsilon, with CIs.

    Left: each group's value with its bootstrap CI; right: each group's gap to the reference
    (``privkit.trust.subgroup_table`` rows of kind ``gap``) with its CI, and zero (no gap) as a
    line. With the class as the group, ``accuracy`` is each class's recall (the normal group's
    specificity and the pneumonia group's sensitivity).

    Args:
        table: rows as ``privkit.trust.subgroup_table`` returns (``kind, group, reference,
            metric, value, ci_low, ci_high, epsilon_target``).
        metric: the metric to draw, one of ``privkit.fairness.METRICS``.
        confidence: the CIs' level, for the legend.
        panel_size: inches per panel.
    """
    rows = table[table["metric"] == metric].dropna(subset=["value"])
    if rows.empty:
        raise ValueError(f"No defined values of metric={metric!r} in the table.")
    where = _positions(rows["epsilon_target"].astype(float).tolist())
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        fig = Figure(figsize=(panel_size[0] * 2, panel_size[1] + 0.6), layout="constrained")
        left, right = fig.subplots(1, 2)
        groups = rows[rows["kind"] == "group"]
        for k, (name, part) in enumerate(groups.groupby("group", sort=True)):
            _errorbar(left, part, where, label=str(name), color=f"C{k}", shift=1.06 ** (k - 0.5))
        _epsilon_axis(left, where)
        left.set_ylabel(METRIC_LABELS.get(metric, metric))
        left.legend(title=f"group ({confidence:.0%} CI)", loc="best")
        gaps = rows[rows["kind"] == "gap"]
        right.axhline(0, color="0.3", linewidth=1)
        for k, ((name, ref), part) in enumerate(gaps.groupby(["group", "reference"], sort=True)):
            _errorbar(right, part, where, label=f"{name} − {ref}", color=f"C{k + 2}", marker="s")
        _epsilon_axis(right, where)
        right.set_ylabel(f"gap in {METRIC_LABELS.get(metric, metric).splitlines()[0]}")
        right.legend(title=f"gap ({confidence:.0%} CI)", loc="best")
        fig.suptitle("Is the model as good for every group? (test split, bootstrap CIs)")
    return fig


def calibration_by_epsilon(
    table: pd.DataFrame, *, metrics: Sequence[str] = ("ece", "brier"), panel_size=(4.8, 3.8)
) -> Figure:
    """Calibration metrics against epsilon, one line per calibration (mean ± sd over seeds).

    Args:
        table: rows as ``privkit.trust.calibration_table`` returns.
        metrics: the metrics to draw, one panel each.
        panel_size: inches per panel.
    """
    missing = sorted(set(metrics) - set(table["metric"]))
    if missing:
        raise ValueError(f"Unknown metric(s) {missing}; the table has {sorted(set(table['metric']))}.")
    where = _positions(table["epsilon_target"].astype(float).tolist())
    seeds = table["seed"].nunique()
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        fig = Figure(figsize=(panel_size[0] * len(metrics), panel_size[1] + 0.9), layout="constrained")
        axes = fig.subplots(1, len(metrics), squeeze=False)[0]
        for ax, metric in zip(axes, metrics):
            part = table[table["metric"] == metric]
            for k, name in enumerate(c for c in CALIBRATION_LABELS if c in set(part["calibration"])):
                stats = part[part["calibration"] == name].groupby("epsilon_target")["value"].agg(["mean", "std"])
                stats = stats.reset_index().fillna({"std": 0.0})
                rows = stats.assign(value=stats["mean"], ci_low=stats["mean"] - stats["std"],
                                    ci_high=stats["mean"] + stats["std"])  # fmt: skip
                _errorbar(ax, rows, where, label=CALIBRATION_LABELS[name], color=f"C{k}", shift=1.06 ** (k - 1))
            _epsilon_axis(ax, where)
            ax.set_ylabel(METRIC_LABELS.get(metric, metric))
            ax.set_ylim(bottom=0)
        handles, labels = axes[0].get_legend_handles_labels()
        spread = f"mean ± sd over {seeds} seeds" if seeds > 1 else "1 seed"
        fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), frameon=False,
                   title=f"test split, {spread}")  # fmt: skip
        fig.suptitle("How honest are the probabilities? (lower is better)")
    return fig


def reliability_diagrams(
    panels: Mapping[str, pd.DataFrame], *, n_bins: int = 15, panel_size=(4.2, 4.2)
) -> Figure:
    """Reliability diagrams: accuracy against top-label confidence per bin, one panel per model.

    Each panel draws the diagonal (perfect calibration) and, for each calibration in its
    table, the accuracy of each non-empty equal-width bin at the bin's mean confidence, marker
    area proportional to the examples in the bin, its ECE in the legend.

    Args:
        panels: title -> rows with ``label``, ``probability`` and ``calibration`` (as
            ``privkit.trust.calibrated_test_scores`` returns, for one or several runs pooled).
        n_bins: equal-width bins (Guo et al. 2017 use 15).
        panel_size: inches per panel.
    """
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        fig = Figure(figsize=(panel_size[0] * len(panels), panel_size[1] + 1.2), layout="constrained")
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (title, rows) in zip(axes, panels.items()):
            ax.plot([0.5, 1], [0.5, 1], color="0.3", linestyle="--", linewidth=1, label="perfectly calibrated")
            for k, name in enumerate(c for c in CALIBRATION_LABELS if c in set(rows["calibration"])):
                part = rows[rows["calibration"] == name]
                bins = calibration.reliability_bins(part["label"], part["probability"], n_bins=n_bins)
                bins = bins[bins["n"] > 0]
                ece = calibration.expected_calibration_error(part["label"], part["probability"], n_bins=n_bins)
                ax.plot(bins["confidence"], bins["accuracy"], color=f"C{k}", linewidth=1.5,
                        label=f"{CALIBRATION_LABELS[name]}, ECE {ece:.3f}")  # fmt: skip
                ax.scatter(bins["confidence"], bins["accuracy"], s=8 + 400 * bins["n"] / bins["n"].sum(),
                           color=f"C{k}", alpha=0.8)  # fmt: skip
            ax.set_xlim(0.48, 1.01)
            ax.set_ylim(0.0, 1.02)
            ax.set_xlabel("confidence in the predicted class")
            ax.set_ylabel("accuracy (share correct)")
            ax.set_title(title)
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize="small", frameon=False)
        fig.suptitle("Reliability on the test split (marker area ∝ cases in the bin)")
    return fig
