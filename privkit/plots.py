"""Figures from tidy results tables: what differential privacy costs in model quality.

Library logic for figures lives here; notebooks call it and show or save the result. Figures
are built on ``matplotlib.figure.Figure`` directly, not through ``pyplot``: nothing global is
switched (no backend, no rcParams, no list of open figures), so this works unchanged in
JupyterLab (make the figure a cell's last expression to show it), in scripts and in tests.

>>> import math, pandas as pd
>>> rows = [
...     {"run_id": f"{eps}-{seed}", "seed": seed, "epsilon_target": eps, "epsilon_spent": eps,
...      "metric": "auc", "value": v + 0.01 * seed, "split": "test"}
...     for eps, v in [(1, 0.70), (4, 0.85), (math.inf, 0.95)] for seed in range(3)
... ]
>>> fig = privacy_utility(pd.DataFrame(rows), metrics=["auc"])
>>> ax = fig.axes[0]
>>> ax.get_xscale(), ax.get_ylabel(), [t.get_text() for t in ax.get_xticklabels()]
('log', 'test ROC AUC', ['1', '4'])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

from privkit._io import atomic_write

REQUIRED_COLUMNS = ("run_id", "seed", "epsilon_target", "epsilon_spent", "metric", "value", "split")

# Axis labels a clinician can read; unknown metrics fall back to their name with spaces.
METRIC_LABELS = {
    "auc": "ROC AUC",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "sensitivity": "sensitivity (true-positive rate)",
    "specificity": "specificity (true-negative rate)",
}
X_LABEL = "privacy budget ε (log scale;\nsmaller = more private)"

_PRIVATE_COLOR = "C0"
_NONPRIVATE_COLOR = "0.25"  # dark grey: a reference level, not one more curve


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

    One panel per metric. Private runs (finite ``epsilon_target``) are drawn as the mean over
    seeds at each target epsilon with error bars of one standard deviation (sample sd,
    ``ddof=1``), on a log x axis whose ticks are the epsilons present. Non-private runs
    (``epsilon_target = inf``, or a missing target with ``epsilon_spent = inf``) are drawn as a
    dashed horizontal line at their mean with a shaded band of ± one sd, labelled "non-private".
    A seed's repeated rows (same epsilon, metric and split) are averaged before the spread
    across seeds is taken.

    The title names the dataset, the model and delta when the table has such a column holding
    a single value.

    Args:
        table: a tidy long results table with at least the columns ``run_id, seed,
            epsilon_target, epsilon_spent, metric, value, split`` (as ``privkit.results``
            writes); optional ``dataset``, ``model``, ``delta`` go into the title.
        metrics: the metrics to plot, one panel each, in order.
        split: the split whose rows are plotted (``"test"`` or ``"val"``).
        by: a column (such as ``"model"``) whose values are drawn side by side, one colour each,
            every one with its own curve and non-private level; ``None`` draws all rows as one.
        ax: axes to draw into, one per metric; by default a new figure is made.
        panel_size: width and height in inches of one panel of a new figure.

    Returns:
        The figure (``ax``'s figure when ``ax`` is given).

    Raises:
        ValueError: columns are missing (they are listed); the table has no rows, so neither
            private nor non-private ones; ``split`` or a metric is not in the table (those
            present are listed); a row has no positive ``epsilon_target`` (and did not spend
            infinite epsilon); ``ax`` holds the wrong number of axes.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"Expected table to have columns {', '.join(REQUIRED_COLUMNS)}; "
            f"missing: {', '.join(missing)}."
        )
    if table.empty:
        raise ValueError(
            "Expected private (finite epsilon_target) or non-private (epsilon_target = inf) "
            "rows; the table has none."
        )
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
        raise ValueError(f"Unknown by={by!r}; the table's columns are: {', '.join(map(str, rows.columns))}.")
    groups = [("", rows)] if by is None else [(str(v), g) for v, g in rows.groupby(by, sort=False)]
    colours = [(_PRIVATE_COLOR, _NONPRIVATE_COLOR)] if by is None else [(c, c) for c in sns.color_palette("colorblind", len(groups))]
    epsilons = sorted(rows.loc[np.isfinite(rows["_epsilon"]), "_epsilon"].unique())

    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        if ax is None:
            width, height = panel_size
            fig = Figure(figsize=(width * len(metrics), height + 0.9), layout="constrained")
            axes = list(fig.subplots(1, len(metrics), squeeze=False)[0])
        else:
            axes = [ax] if isinstance(ax, Axes) else list(ax)
            if len(axes) != len(metrics):
                raise ValueError(
                    f"Expected one axes per metric ({len(metrics)}); got {len(axes)} in ax."
                )
            fig = axes[0].figure
        handles: list = []
        for (name, group), colour in zip(groups, colours):
            private = group[np.isfinite(group["_epsilon"])]  # every row is private or not
            nonprivate = group[np.isinf(group["_epsilon"])]
            for metric, panel in zip(metrics, axes):
                _panel(
                    panel,
                    private[private["metric"] == metric],
                    nonprivate[nonprivate["metric"] == metric],
                    colour,
                )
            seeds = {"private": private["seed"].nunique(), "nonprivate": nonprivate["seed"].nunique()}
            handles += _legend_handles(seeds, colour, name)
        for metric, panel in zip(metrics, axes):
            _axes(panel, epsilons, ylabel=f"{split} {_metric_label(metric)}")
        title = _title(rows)
        if ax is None:
            ncol = len(handles) if by is None else len(groups)  # one column per group
            fig.legend(handles=handles, loc="outside lower center", ncol=ncol, frameon=False)
            if title:
                fig.suptitle(title)
        else:
            axes[0].legend(handles=handles, loc="best")
            if title:
                axes[0].set_title(title)
    return fig


def save_figure(fig: Figure, path_stem: str | Path, *, dpi: int = 200) -> list[Path]:
    """Write ``<path_stem>.png`` and ``<path_stem>.pdf``, each atomically; create the folder.

    Each file is written to a temporary file in the same folder and renamed over the target,
    so a reader never sees half a figure. A ``.png`` or ``.pdf`` suffix on ``path_stem`` is
    dropped; any other dot is kept (``fig_eps0.5`` writes ``fig_eps0.5.png``).

    Args:
        fig: the figure to save.
        path_stem: the path without extension, e.g. ``results/sweep/privacy_utility``.
        dpi: resolution of the PNG.

    Returns:
        The paths written: ``[<stem>.png, <stem>.pdf]``.

    >>> import tempfile, pathlib
    >>> fig = Figure(); _ = fig.subplots().plot([0, 1])
    >>> paths = save_figure(fig, pathlib.Path(tempfile.mkdtemp()) / "new" / "fig")
    >>> [p.name for p in paths], all(p.stat().st_size > 0 for p in paths)
    (['fig.png', 'fig.pdf'], True)
    """
    stem = Path(path_stem)
    if stem.suffix.lower() in (".png", ".pdf"):
        stem = stem.with_suffix("")
    paths = []
    for fmt in ("png", "pdf"):
        path = stem.with_name(f"{stem.name}.{fmt}")
        atomic_write(
            path, lambda tmp, fmt=fmt: fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
        )
        paths.append(path)
    return paths


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


def _panel(ax: Axes, private: pd.DataFrame, nonprivate: pd.DataFrame, colours: tuple) -> None:
    private_colour, nonprivate_colour = colours
    if not nonprivate.empty:
        level = _per_seed(nonprivate.assign(_epsilon=0.0)).iloc[0]
        if not math.isnan(level["std"]):
            ax.axhspan(
                level["mean"] - level["std"], level["mean"] + level["std"],
                color=nonprivate_colour, alpha=0.12, linewidth=0,
            )  # fmt: skip
        ax.axhline(level["mean"], color=nonprivate_colour, linestyle="--", linewidth=1.6)
    if not private.empty:
        stats = _per_seed(private)
        ax.errorbar(
            stats["_epsilon"].to_numpy(float), stats["mean"].to_numpy(float),
            yerr=stats["std"].fillna(0.0).to_numpy(float),  # one seed: no bar
            color=private_colour, marker="o", markersize=6, linewidth=2, capsize=4,
        )  # fmt: skip


def _axes(ax: Axes, epsilons: list[float], *, ylabel: str) -> None:
    ax.set_xscale("log", base=2)
    if epsilons:
        ax.set_xlim(min(epsilons) / 2**0.4, max(epsilons) * 2**0.4)
    else:
        ax.set_xlim(0.5, 8)  # only the non-private level: an x axis with no ticks
    ax.xaxis.set_major_locator(FixedLocator(epsilons))
    ax.xaxis.set_major_formatter(lambda x, _: f"{x:g}")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel(ylabel)


def _legend_handles(n_seeds: dict[str, int], colours: tuple, name: str = "") -> list:
    private_colour, nonprivate_colour = colours
    prefix = f"{name}: " if name else ""
    handles: list = []
    if n_seeds["private"]:
        n = n_seeds["private"]
        label = f"DP-SGD (mean ± sd over {n} seeds)" if n > 1 else "DP-SGD (1 seed)"
        handles.append(Line2D([], [], color=private_colour, marker="o", linewidth=2, label=prefix + label))
    if n_seeds["nonprivate"]:
        line = Line2D([], [], color=nonprivate_colour, linestyle="--", linewidth=1.6, label=prefix + "non-private")
        handles.append(line)
        if n_seeds["nonprivate"] > 1:
            label = f"non-private ± sd ({n_seeds['nonprivate']} seeds)"
            handles.append(Patch(color=nonprivate_colour, alpha=0.12, label=prefix + label))
    return handles


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
