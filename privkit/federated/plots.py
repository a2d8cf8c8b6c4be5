"""The federated study at a glance: test AUC against epsilon, centralised against FedAvg and
cyclic training, one panel per way the records are spread over hospitals.

>>> import math, pandas as pd
>>> rows = [dict(method=m, partition=p, n_sites=n, seed=0, epsilon_target=e, split="test",
...              metric="auc", value=0.9) for m, p, n in [("centralised", "pooled", 1),
...              ("fedavg", "iid", 3), ("cyclic", "label_skew", 3)] for e in (1.0, 8.0, math.inf)]
>>> fig = federated_comparison(pd.DataFrame(rows))
>>> [ax.get_title() for ax in fig.axes[:2]], fig.axes[0].get_xticklabels()[-1].get_text()
(['records spread IID', 'label-skewed sites (Dirichlet)'], 'no DP')
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

METHOD_STYLE = {"centralised": ("0.2", "pooled data (centralised)"), "fedavg": ("C0", "FedAvg"),
                "cyclic": ("C1", "cyclic")}  # fmt: skip
PARTITION_TITLES = {"iid": "records spread IID", "label_skew": "label-skewed sites (Dirichlet)",
                    "size_skew": "size-skewed sites"}  # fmt: skip
_MARKERS = ["o", "s", "^", "D", "v"]


def federated_comparison(
    table: pd.DataFrame,
    *,
    metric: str = "auc",
    split: str = "test",
    partitions: Sequence[str] | None = None,
    panel_size: tuple[float, float] = (4.8, 3.8),
) -> Figure:
    """One panel per partition: ``metric`` against epsilon (no DP at the right), mean ± sd over seeds.

    Colour is the method, marker and line style the number of sites; the centralised
    (pooled-data) run is drawn in every panel as the reference.

    Args:
        table: the tidy table of :func:`privkit.federated.study.run_study`.
        metric, split: what to plot.
        partitions: the panels, in order; default those in the table.
        panel_size: inches per panel.

    Raises:
        ValueError: when the table has no rows of ``metric`` on ``split``.
    """
    rows = table[(table["metric"] == metric) & (table["split"] == split)]
    if rows.empty:
        raise ValueError(f"The table has no rows of metric={metric!r} on split={split!r}.")
    epsilons = sorted(rows["epsilon_target"].unique(), key=lambda e: (math.isinf(e), e))
    position = {e: i for i, e in enumerate(epsilons)}
    labels = ["no DP" if math.isinf(e) else f"{e:g}" for e in epsilons]
    panels = list(partitions or [p for p in PARTITION_TITLES if p in set(rows["partition"])])
    counts = sorted(int(n) for n in rows.loc[rows["method"] != "centralised", "n_sites"].unique())
    stats = rows.groupby(["method", "partition", "n_sites", "epsilon_target"])["value"].agg(["mean", "std"]).reset_index()

    width, height = panel_size
    fig = Figure(figsize=(width * len(panels), height + 1.0), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, partition in zip(axes, panels):
        for method, (color, name) in METHOD_STYLE.items():
            here = stats[(stats["method"] == method) & (stats["partition"] == ("pooled" if method == "centralised" else partition))]
            for k, n in enumerate([1] if method == "centralised" else counts):
                line = here[here["n_sites"] == n].sort_values("epsilon_target", key=lambda s: s.map(position))
                if line.empty:
                    continue
                x = line["epsilon_target"].map(position).to_numpy() + (0 if method == "centralised" else 0.06 * (k + 1) * (1 if method == "fedavg" else -1))
                label = name if method == "centralised" else f"{name}, {n} sites"
                ax.errorbar(x, line["mean"], yerr=line["std"].fillna(0), color=color, label=label, capsize=3,
                            marker="*" if method == "centralised" else _MARKERS[k % len(_MARKERS)],
                            linestyle="-" if method == "centralised" else ["--", ":", "-."][k % 3],
                            markersize=9 if method == "centralised" else 6)  # fmt: skip
        ax.set_xticks(np.arange(len(epsilons)), labels)
        ax.set_title(PARTITION_TITLES.get(partition, partition))
        ax.set_xlabel("privacy budget ε per patient\n(smaller = more private)")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"{split} ROC AUC" if metric == "auc" else f"{split} {metric}")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=min(4, len(names)), frameon=False)
    return fig
