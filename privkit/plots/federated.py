"""The federated study at a glance: test AUC against epsilon, centralised against FedAvg and
cyclic training, one panel per way the records are spread over hospitals.

>>> import math, pandas as pd
>>> rows = [dict(method=m, partition=p, n_sites=n, seed=0, epsilon_target=e, split="test",
...              metric="auc", value=0.9)
...         for m, p, n in [("centralised", "pooled", 1), ("fedavg", "iid", 3),
...                         ("cyclic", "label_skew", 3)]
...         for e in (1.0, 8.0, math.inf)]
>>> fig = federated_comparison(pd.DataFrame(rows))
>>> [ax.get_title() for ax in fig.axes[:2]], fig.axes[0].get_xticklabels()[-1].get_text()
(['records spread IID', 'label-skewed sites (Dirichlet)'], 'non-\\nprivate')
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from matplotlib.figure import Figure

from privkit.plots._figure import new_figure, palette, require_columns, theme
from privkit.plots.epsilon_axis import EpsilonAxis, plot_series

METHOD_STYLE = {
    "centralised": ("0.2", "pooled data (centralised)"),
    "fedavg": (palette(0), "FedAvg"),
    "cyclic": (palette(1), "cyclic"),
}
PARTITION_TITLES = {
    "iid": "records spread IID",
    "label_skew": "label-skewed sites (Dirichlet)",
    "size_skew": "size-skewed sites",
}
COLUMNS = ("method", "partition", "n_sites", "seed", "epsilon_target", "split", "metric", "value")
X_LABEL = "privacy budget ε per patient (log scale;\nsmaller = more private)"
_MARKERS = ["o", "s", "^", "D", "v"]
_LINESTYLES = ["--", ":", "-."]


def federated_comparison(
    table: pd.DataFrame,
    *,
    metric: str = "auc",
    split: str = "test",
    partitions: Sequence[str] | None = None,
    panel_size: tuple[float, float] = (4.8, 3.8),
) -> Figure:
    """One panel per partition: ``metric`` against epsilon, mean ± sd over seeds.

    On the epsilon axis of :mod:`privkit.plots.epsilon_axis` (non-private runs at its
    "non-private" position). Colour is the method, marker and line style the number of sites;
    the centralised (pooled-data) run is drawn in every panel as the reference.

    Args:
        table: the tidy table of :func:`privkit.federated.study.run_study`.
        metric, split: what to plot.
        partitions: the panels, in order; default those in the table.
        panel_size: inches per panel.

    Raises:
        ValueError: when columns are missing or the table has no rows of ``metric`` on ``split``.
    """
    require_columns(table, COLUMNS)
    rows = table[(table["metric"] == metric) & (table["split"] == split)]
    if rows.empty:
        raise ValueError(f"The table has no rows of metric={metric!r} on split={split!r}.")
    axis = EpsilonAxis.of(rows["epsilon_target"].astype(float))
    present = set(rows["partition"])
    panels = list(partitions or [p for p in PARTITION_TITLES if p in present])
    federated = rows["method"] != "centralised"
    counts = sorted(int(n) for n in rows.loc[federated, "n_sites"].unique())
    keys = ["method", "partition", "n_sites", "epsilon_target"]
    stats = rows.groupby(keys)["value"].agg(["mean", "std"]).reset_index()
    stats["std"] = stats["std"].fillna(0.0)  # one seed: no bar

    with theme():
        fig, axes = new_figure(len(panels), panel_size, extra_height=1.0, sharey=True)
        for ax, partition in zip(axes, panels):
            for method, (color, name) in METHOD_STYLE.items():
                pooled = method == "centralised"
                here = stats[
                    (stats["method"] == method)
                    & (stats["partition"] == ("pooled" if pooled else partition))
                ]
                for k, n in enumerate([1] if pooled else counts):
                    line = here[here["n_sites"] == n]
                    if line.empty:
                        continue
                    side = 1 if method == "fedavg" else -1  # FedAvg right, cyclic left
                    plot_series(
                        ax,
                        axis,
                        line["epsilon_target"],
                        line["mean"],
                        low=line["mean"] - line["std"],
                        high=line["mean"] + line["std"],
                        color=color,
                        label=name if pooled else f"{name}, {n} sites",
                        shift=1.0 if pooled else 2 ** (0.06 * (k + 1) * side),
                        marker="*" if pooled else _MARKERS[k % len(_MARKERS)],
                        linestyle="-" if pooled else _LINESTYLES[k % len(_LINESTYLES)],
                        markersize=9 if pooled else 6,
                    )
            axis.draw(ax, label=X_LABEL)
            ax.set_title(PARTITION_TITLES.get(partition, partition))
        axes[0].set_ylabel(f"{split} ROC AUC" if metric == "auc" else f"{split} {metric}")
        handles, names = axes[0].get_legend_handles_labels()
        ncol = min(4, len(names))
        fig.legend(handles, names, loc="outside lower center", ncol=ncol, frameon=False)
    return fig
