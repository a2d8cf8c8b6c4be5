"""Figures for privacy budgets: epsilon over training, a budget spent until it blocks,
individualised privacy against the strictest budget, and attack-risk bounds against epsilon.

Each function takes a tidy table (one row per observation) and returns a
``matplotlib.figure.Figure`` built without ``pyplot`` (see :mod:`privkit.plots`).

>>> import pandas as pd
>>> t = pd.DataFrame({"epoch": [1, 2, 1, 2], "accountant": ["prv", "prv", "rdp", "rdp"],
...                   "epsilon": [1.0, 1.5, 1.2, 1.8]})
>>> epsilon_over_training(t).axes[0].get_xlabel()
'epochs'
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from privkit.plots._figure import new_figure, palette, require_columns, theme
from privkit.plots.epsilon_axis import EpsilonAxis, plot_series

ACCOUNTANT_LABELS = {
    "prv": "PRV (numerical, tight)",
    "rdp": "RDP (Rényi, upper bound)",
    "gdp": "GDP (CLT approximation; may under-report)",
}


def epsilon_over_training(table: pd.DataFrame) -> Figure:
    """Epsilon spent after each epoch, one line per accountant.

    Args:
        table: columns ``epoch``, ``accountant``, ``epsilon``.
    """
    require_columns(table, ("epoch", "accountant", "epsilon"))
    with theme():
        fig, [ax] = new_figure(1, (5.2, 3.8))
        for accountant, rows in table.groupby("accountant", sort=False):
            rows = rows.sort_values("epoch")
            label = ACCOUNTANT_LABELS.get(accountant, accountant)
            ax.plot(rows["epoch"], rows["epsilon"], marker=".", label=label)
        ax.set_xlabel("epochs")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)
        ax.set_ylabel("ε spent (δ fixed)")
        ax.legend(loc="lower right")
    return fig


def budget_spending(table: pd.DataFrame) -> Figure:
    """Each scope's spent epsilon after each run, against its budget; refused runs marked.

    Args:
        table: columns ``scope``, ``run`` (1, 2, ...), ``composed`` (epsilon composed by the
            accountant), ``basic`` (sum of the runs' epsilons), ``budget`` and ``refused``
            (bool: the ledger refused this run, so nothing was added).
    """
    require_columns(table, ("scope", "run", "composed", "basic", "budget", "refused"))
    scopes = list(dict.fromkeys(table["scope"]))
    with theme():
        fig, axes = new_figure(len(scopes), (4.2, 3.6))
        for ax, scope in zip(axes, scopes):
            rows = table[table["scope"] == scope].sort_values("run")
            budget = rows["budget"].iloc[0]
            ok = rows[~rows["refused"].astype(bool)]
            ax.plot(
                ok["run"],
                ok["composed"],
                marker="o",
                color=palette(0),
                label="spent (composed, PRV)",
            )
            ax.plot(
                ok["run"],
                ok["basic"],
                marker=".",
                ls="--",
                color=palette(1),
                label="sum of ε (basic composition)",
            )
            ax.axhline(budget, color=palette(3), lw=1.5, label="budget")
            refused = rows[rows["refused"].astype(bool)]
            ax.scatter(
                refused["run"],
                np.full(len(refused), budget),
                marker="X",
                s=120,
                color=palette(3),
                zorder=3,
                label="refused: nothing spent",
            )
            ax.set_title(scope.split("/")[-1].replace(":", " "), fontsize="medium")
            ax.set_xlabel("training run")
            ax.set_xticks(rows["run"])
            ax.set_ylim(0, 1.15 * max(rows["basic"].max(), budget))
        axes[0].set_ylabel("ε")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=4, frameon=False)
    return fig


def individual_vs_uniform(table: pd.DataFrame, *, metric: str = "auc") -> Figure:
    """Test performance of individualised privacy beside uniform training at one epsilon.

    Args:
        table: columns ``method``, ``seed``, ``metric``, ``value``; the methods in the order
            they should appear (e.g. strictest epsilon for all, individualised, loosest for all).
        metric: the metric to show.
    """
    require_columns(table, ("method", "seed", "metric", "value"))
    rows = table[table["metric"] == metric]
    if rows.empty:
        present = ", ".join(sorted(map(str, table["metric"].unique())))
        raise ValueError(f"Unknown metric={metric!r}; the table has: {present}.")
    with theme():
        fig, [ax] = new_figure(1, (6.4, 3.8))
        order = list(dict.fromkeys(rows["method"]))
        sns.stripplot(rows, x="method", y="value", order=order, color="0.4", size=6, ax=ax)
        sns.pointplot(
            rows,
            x="method",
            y="value",
            order=order,
            errorbar="sd",
            color=palette(0),
            linestyle="none",
            markers="D",
            capsize=0.15,
            ax=ax,
        )
        ax.set_xlabel("")
        name = metric.upper() if metric == "auc" else metric
        ax.set_ylabel(f"test {name} (mean ± sd over seeds)")
    return fig


def risk_curves(table: pd.DataFrame) -> Figure:
    """Highest true-positive rate of any membership-inference attack, against epsilon.

    Args:
        table: columns ``epsilon``, ``fpr``, ``bound`` (which bound: e.g. "from (ε, δ)",
            "from the mechanism"), ``tpr``. One panel per false-positive rate.
    """
    require_columns(table, ("epsilon", "fpr", "bound", "tpr"))
    fprs = sorted(table["fpr"].unique())
    axis = EpsilonAxis.of(table["epsilon"])
    with theme():
        fig, axes = new_figure(len(fprs), (4.6, 3.8))
        for ax, fpr in zip(axes, fprs):
            rows = table[table["fpr"] == fpr]
            for i, (bound, part) in enumerate(rows.groupby("bound", sort=False)):
                plot_series(ax, axis, part["epsilon"], part["tpr"], color=palette(i), label=bound)
            ax.axhline(fpr, color="0.4", ls=":", label="guessing (TPR = FPR)")
            ax.set_yscale("log")
            axis.draw(ax)
            ax.set_title(f"at FPR = {fpr:.1%}", fontsize="medium")
        axes[0].set_ylabel("attack TPR, upper bound (log)")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False)
    return fig
