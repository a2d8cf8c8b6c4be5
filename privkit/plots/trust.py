"""Figures of fairness and calibration against the privacy budget, and reliability diagrams.

Built on ``matplotlib.figure.Figure`` (no pyplot), from the tables of ``privkit.trust``, on the
epsilon axis of :mod:`privkit.plots.epsilon_axis`.

>>> import pandas as pd
>>> rows = [{"kind": "group", "group": g, "reference": "", "metric": "accuracy", "value": v,
...          "ci_low": v - 0.05, "ci_high": v + 0.05, "epsilon_target": e}
...         for e in (1.0, 8.0, float("inf")) for g, v in (("normal", 0.6), ("pneumonia", 0.95))]
>>> rows += [{"kind": "gap", "group": "pneumonia", "reference": "normal", "metric": "accuracy",
...           "value": 0.35, "ci_low": 0.3, "ci_high": 0.4, "epsilon_target": e}
...          for e in (1.0, 8.0, float("inf"))]
>>> fig = subgroup_gaps(pd.DataFrame(rows))
>>> [t.get_text() for t in fig.axes[0].get_xticklabels()]
['1', '8', 'non-\\nprivate']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from matplotlib.figure import Figure

from privkit import calibration
from privkit.plots._figure import new_figure, palette, require_columns, theme
from privkit.plots.epsilon_axis import EpsilonAxis, plot_series

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
SUBGROUP_COLUMNS = (
    "kind",
    "group",
    "reference",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "epsilon_target",
)


def _errorbar(ax, axis: EpsilonAxis, rows: pd.DataFrame, **style) -> None:
    """``rows``' values with their intervals (``ci_low`` to ``ci_high``) against epsilon."""
    plot_series(
        ax,
        axis,
        rows["epsilon_target"],
        rows["value"],
        low=rows["ci_low"],
        high=rows["ci_high"],
        linewidth=1.8,
        **style,
    )


def subgroup_gaps(
    table: pd.DataFrame,
    *,
    metric: str = "accuracy",
    confidence: float = 0.95,
    panel_size: tuple[float, float] = (4.8, 3.8),
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
    require_columns(table, SUBGROUP_COLUMNS)
    rows = table[table["metric"] == metric].dropna(subset=["value"])
    if rows.empty:
        raise ValueError(f"No defined values of metric={metric!r} in the table.")
    axis = EpsilonAxis.of(rows["epsilon_target"].astype(float))
    label = METRIC_LABELS.get(metric, metric)
    with theme():
        fig, (left, right) = new_figure(2, panel_size, extra_height=0.6)
        groups = rows[rows["kind"] == "group"]
        for k, (name, part) in enumerate(groups.groupby("group", sort=True)):
            _errorbar(left, axis, part, label=str(name), color=palette(k), shift=1.06 ** (k - 0.5))
        axis.draw(left)
        left.set_ylabel(label)
        left.legend(title=f"group ({confidence:.0%} CI)", loc="best")
        gaps = rows[rows["kind"] == "gap"]
        right.axhline(0, color="0.3", linewidth=1)
        for k, ((name, ref), part) in enumerate(gaps.groupby(["group", "reference"], sort=True)):
            _errorbar(right, axis, part, label=f"{name} − {ref}", color=palette(k + 2), marker="s")
        axis.draw(right)
        right.set_ylabel(f"gap in {label.splitlines()[0]}")
        right.legend(title=f"gap ({confidence:.0%} CI)", loc="best")
        fig.suptitle("Is the model as good for every group? (test split, bootstrap CIs)")
    return fig


def calibration_by_epsilon(
    table: pd.DataFrame,
    *,
    metrics: Sequence[str] = ("ece", "brier"),
    panel_size: tuple[float, float] = (4.8, 3.8),
) -> Figure:
    """Calibration metrics against epsilon, one line per calibration (mean ± sd over seeds).

    Args:
        table: rows as ``privkit.trust.calibration_table`` returns.
        metrics: the metrics to draw, one panel each.
        panel_size: inches per panel.
    """
    require_columns(table, ("seed", "epsilon_target", "calibration", "metric", "value"))
    missing = sorted(set(metrics) - set(table["metric"]))
    if missing:
        present = sorted(set(table["metric"]))
        raise ValueError(f"Unknown metric(s) {missing}; the table has {present}.")
    axis = EpsilonAxis.of(table["epsilon_target"].astype(float))
    seeds = table["seed"].nunique()
    with theme():
        fig, axes = new_figure(len(metrics), panel_size, extra_height=0.9)
        for ax, metric in zip(axes, metrics):
            part = table[table["metric"] == metric]
            present = set(part["calibration"])
            for k, name in enumerate(c for c in CALIBRATION_LABELS if c in present):
                values = part[part["calibration"] == name].groupby("epsilon_target")["value"]
                stats = values.agg(["mean", "std"]).reset_index().fillna({"std": 0.0})
                rows = stats.assign(
                    value=stats["mean"],
                    ci_low=stats["mean"] - stats["std"],
                    ci_high=stats["mean"] + stats["std"],
                )
                label = CALIBRATION_LABELS[name]
                _errorbar(ax, axis, rows, label=label, color=palette(k), shift=1.06 ** (k - 1))
            axis.draw(ax)
            ax.set_ylabel(METRIC_LABELS.get(metric, metric))
            ax.set_ylim(bottom=0)
        handles, labels = axes[0].get_legend_handles_labels()
        spread = f"mean ± sd over {seeds} seeds" if seeds > 1 else "1 seed"
        fig.legend(
            handles,
            labels,
            loc="outside lower center",
            ncol=len(labels),
            frameon=False,
            title=f"test split, {spread}",
        )
        fig.suptitle("How honest are the probabilities? (lower is better)")
    return fig


def reliability_diagrams(
    panels: Mapping[str, pd.DataFrame],
    *,
    n_bins: int = 15,
    panel_size: tuple[float, float] = (4.2, 4.2),
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
    if not panels:
        raise ValueError("Expected at least one panel in panels={}.")
    columns = ("label", "probability", "calibration")
    for title, rows in panels.items():
        require_columns(rows, columns, name=f"panels[{title!r}]")
    with theme():
        fig, axes = new_figure(len(panels), panel_size, extra_height=1.2)
        for ax, (title, rows) in zip(axes, panels.items()):
            ax.plot(
                [0.5, 1],
                [0.5, 1],
                color="0.3",
                linestyle="--",
                linewidth=1,
                label="perfectly calibrated",
            )
            present = set(rows["calibration"])
            for k, name in enumerate(c for c in CALIBRATION_LABELS if c in present):
                part = rows[rows["calibration"] == name]
                labels, probabilities = part["label"], part["probability"]
                bins = calibration.reliability_bins(labels, probabilities, n_bins=n_bins)
                bins = bins[bins["n"] > 0]
                ece = calibration.expected_calibration_error(labels, probabilities, n_bins=n_bins)
                ax.plot(
                    bins["confidence"],
                    bins["accuracy"],
                    color=palette(k),
                    linewidth=1.5,
                    label=f"{CALIBRATION_LABELS[name]}, ECE {ece:.3f}",
                )
                ax.scatter(
                    bins["confidence"],
                    bins["accuracy"],
                    s=8 + 400 * bins["n"] / bins["n"].sum(),
                    color=palette(k),
                    alpha=0.8,
                )
            ax.set_xlim(0.48, 1.01)
            ax.set_ylim(0.0, 1.02)
            ax.set_xlabel("confidence in the predicted class")
            ax.set_ylabel("accuracy (share correct)")
            ax.set_title(title)
            ax.legend(
                loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize="small", frameon=False
            )
        fig.suptitle("Reliability on the test split (marker area ∝ cases in the bin)")
    return fig
