"""The privacy-utility figure: what differential privacy costs in model quality.

>>> import math, pandas as pd
>>> rows = [
...     {"run_id": f"{eps}-{seed}", "seed": seed, "epsilon_target": eps, "epsilon_spent": eps,
...      "metric": "auc", "value": v + 0.01 * seed, "split": "test"}
...     for eps, v in [(1, 0.70), (4, 0.85), (math.inf, 0.95)] for seed in range(3)
... ]
>>> fig = privacy_utility(pd.DataFrame(rows), metrics=["auc"])
>>> ax = fig.axes[0]
>>> ax.get_xscale(), ax.get_ylabel(), [t.get_text() for t in ax.get_xticklabels()]
('log', 'test ROC AUC', ['1', '4', 'non-\\nprivate'])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from privkit.plots._figure import new_figure, palette, require_columns, theme
from privkit.plots.epsilon_axis import EpsilonAxis, plot_series

REQUIRED_COLUMNS = ("run_id", "seed", "epsilon_target", "epsilon_spent", "metric", "value", "split")

# Axis labels a clinician can read; unknown metrics fall back to their name with spaces.
METRIC_LABELS = {
    "auc": "ROC AUC",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "sensitivity": "sensitivity (true-positive rate)",
    "specificity": "specificity (true-negative rate)",
}


def privacy_utility(
    table: pd.DataFrame,
    *,
    metrics: Sequence[str] = ("auc", "accuracy"),
    split: str = "test",
    by: str | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    panel_size: tuple[float, float] = (4.6, 3.6),
) -> Figure:
    """The privacy-utility figure: each metric against the privacy budget epsilon.

    One panel per metric, on the epsilon axis of :mod:`privkit.plots.epsilon_axis`. Each
    epsilon's runs are drawn as the mean over seeds with error bars of one standard deviation
    (sample sd, ``ddof=1``); non-private runs (``epsilon_target = inf``, or a missing target with
    ``epsilon_spent = inf``) at the axis's "non-private" position. A seed's repeated rows (same
    epsilon, metric and split) are averaged before the spread across seeds is taken.

    The title names the dataset, the model and delta when the table has such a column holding
    a single value.

    Args:
        table: a tidy long results table with at least the columns ``run_id, seed,
            epsilon_target, epsilon_spent, metric, value, split`` (as ``privkit.results``
            writes); optional ``dataset``, ``model``, ``delta`` go into the title.
        metrics: the metrics to plot, one panel each, in order.
        split: the split whose rows are plotted (``"test"`` or ``"val"``).
        by: a column (such as ``"model"``) whose values are drawn side by side, one colour each,
            every one with its own curve and non-private point; ``None`` draws all rows as one.
        ax: axes to draw into, one per metric; by default a new figure is made.
        panel_size: width and height in inches of one panel of a new figure.

    Returns:
        The figure (``ax``'s figure when ``ax`` is given).

    Raises:
        ValueError: columns are missing (they are listed) or the table has no rows; ``split``
            or a metric is not in the table (those present are listed); a row has no positive
            ``epsilon_target`` (and did not spend infinite epsilon); ``ax`` holds the wrong
            number of axes.
    """
    require_columns(table, REQUIRED_COLUMNS)
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if not metrics:
        raise ValueError("Expected at least one metric in metrics=[].")
    splits = sorted(str(s) for s in table["split"].dropna().unique())
    if split not in splits:
        raise ValueError(f"Unknown split={split!r}; the table has: {', '.join(splits)}.")
    rows = _with_epsilon(table[table["split"] == split])
    present = sorted(str(m) for m in rows["metric"].dropna().unique())
    unknown = [m for m in metrics if m not in present]
    if unknown:
        raise ValueError(
            f"Unknown metric(s) {', '.join(map(repr, unknown))} for split={split!r}; "
            f"the table has: {', '.join(present)}."
        )
    rows = rows[rows["metric"].isin(metrics)]
    if by is not None and by not in rows.columns:
        columns = ", ".join(map(str, rows.columns))
        raise ValueError(f"Unknown by={by!r}; the table's columns are: {columns}.")
    groups = [("", rows)] if by is None else [(str(v), g) for v, g in rows.groupby(by, sort=False)]
    axis = EpsilonAxis.of(rows["_epsilon"])

    with theme():
        fig, axes = new_figure(len(metrics), panel_size, extra_height=0.9, ax=ax)
        for k, (name, group) in enumerate(groups):
            label = _spread_label(group)
            for metric, panel in zip(metrics, axes):
                stats = _per_seed(group[group["metric"] == metric])
                sd = stats["std"].fillna(0.0)  # one seed: no bar
                plot_series(
                    panel,
                    axis,
                    stats["_epsilon"],
                    stats["mean"],
                    low=stats["mean"] - sd,
                    high=stats["mean"] + sd,
                    color=palette(k),
                    label=f"{name}: {label}" if name else label,
                    shift=1.06 ** (k - (len(groups) - 1) / 2),  # side by side, centred
                    markersize=6,
                    linewidth=2,
                    capsize=4,
                )
        for metric, panel in zip(metrics, axes):
            axis.draw(panel)
            panel.set_ylabel(f"{split} {_metric_label(metric)}")
        handles, labels = axes[0].get_legend_handles_labels()
        title = _title(rows)
        if ax is None:
            fig.legend(handles, labels, loc="outside lower center", ncol=len(groups), frameon=False)
            if title:
                fig.suptitle(title)
        else:
            axes[0].legend(handles, labels, loc="best")
            if title:
                axes[0].set_title(title)
    return fig


def _with_epsilon(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with a numeric ``_epsilon`` (inf for non-private) and numeric ``value``."""
    target = pd.to_numeric(rows["epsilon_target"], errors="coerce").astype(float)
    spent = pd.to_numeric(rows["epsilon_spent"], errors="coerce").astype(float)
    # A run without a target (privkit records noise_multiplier=0 that way) is non-private when
    # it spent infinite epsilon; a run set by a finite noise multiplier has no target to plot.
    epsilon = target.where(target.notna(), np.where(np.isinf(spent), math.inf, np.nan))
    unplaced = rows.loc[epsilon.isna() | (epsilon <= 0), "run_id"].unique()
    if len(unplaced):
        shown = ", ".join(str(r) for r in unplaced[:5])
        if len(unplaced) > 5:
            shown += f" and {len(unplaced) - 5} more"
        raise ValueError(
            f"Expected epsilon_target > 0 (inf for non-private runs) in every row; "
            f"{len(unplaced)} run(s) have none or a non-positive one: {shown}."
        )
    return rows.assign(_epsilon=epsilon, value=pd.to_numeric(rows["value"], errors="coerce"))


def _per_seed(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over seeds of each epsilon's values (a seed's repeats averaged first)."""
    seeds = rows.groupby(["_epsilon", "seed"], as_index=False)["value"].mean()
    return seeds.groupby("_epsilon")["value"].agg(["mean", "std"]).reset_index()  # sd: ddof=1


def _spread_label(rows: pd.DataFrame) -> str:
    """``mean ± sd over 3 seeds``, naming the non-private runs' count when it differs."""
    private = rows.loc[np.isfinite(rows["_epsilon"]), "seed"].nunique()
    nonprivate = rows.loc[np.isinf(rows["_epsilon"]), "seed"].nunique()
    counts = {n for n in (private, nonprivate) if n}
    if len(counts) == 1:
        (n,) = counts
        return f"mean ± sd over {n} seeds" if n > 1 else "1 seed"
    return f"mean ± sd over {private} seeds ({nonprivate} non-private)"


def _metric_label(metric: str) -> str:
    if metric in METRIC_LABELS:
        return METRIC_LABELS[metric]
    if metric.startswith("auc_"):  # a per-label AUC of a multi-label model
        return f"ROC AUC ({metric[4:].replace('_', ' ')})"
    return metric.replace("_", " ")


def _title(rows: pd.DataFrame) -> str:
    """``dataset · model · δ = ...`` from the columns that hold a single value."""
    parts = []
    for column in ("dataset", "model"):
        if column in rows.columns:
            values = rows[column].dropna().unique()
            if len(values) == 1:
                parts.append(str(values[0]))
    if "delta" in rows.columns:
        # Non-private rows may record no delta; the private runs' delta is the one that counts.
        deltas = pd.to_numeric(rows["delta"], errors="coerce")
        deltas = deltas[np.isfinite(rows["_epsilon"]) & deltas.notna()].unique()
        if len(deltas) == 1:
            parts.append(f"δ = {deltas[0]:g}")
    return " · ".join(parts)
