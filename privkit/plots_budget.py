"""Figures for privacy budgets: epsilon over training, a budget spent until it blocks,
individualised privacy against the strictest budget, and attack-risk bounds against epsilon.

Each function takes a tidy table (one row per observation) and returns a
``matplotlib.figure.Figure`` built without ``pyplot``, as in :mod:`privkit.plots`.

>>> import pandas as pd
>>> t = pd.DataFrame({"epoch": [1, 2, 1, 2], "accountant": ["prv", "prv", "rdp", "rdp"],
...                   "epsilon": [1.0, 1.5, 1.2, 1.8]})
>>> epsilon_over_training(t).axes[0].get_xlabel()
'epochs'
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import FixedFormatter, FixedLocator, MaxNLocator, NullLocator

from privkit.plots import X_LABEL

ACCOUNTANT_LABELS = {
    "prv": "PRV (numerical, tight)",
    "rdp": "RDP (Rényi, upper bound)",
    "gdp": "GDP (CLT approximation; may under-report)",
}


def _require(table: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"Expected {name} to have columns {', '.join(columns)}; missing: {', '.join(missing)}.")
    if table.empty:
        raise ValueError(f"Expected rows in {name}; it is empty.")


def _figure(panels: int, size: tuple[float, float] = (5.2, 3.8)) -> tuple[Figure, list]:
    fig = Figure(figsize=(size[0] * panels, size[1]), layout="constrained")
    return fig, list(fig.subplots(1, panels, squeeze=False)[0])


def epsilon_over_training(table: pd.DataFrame) -> Figure:
    """Epsilon spent after each epoch, one line per accountant.

    Args:
        table: columns ``epoch``, ``accountant``, ``epsilon``.
    """
    _require(table, ("epoch", "accountant", "epsilon"), "table")
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        fig, [ax] = _figure(1)
        for accountant, rows in table.groupby("accountant", sort=False):
            rows = rows.sort_values("epoch")
            ax.plot(rows["epoch"], rows["epsilon"], marker=".", label=ACCOUNTANT_LABELS.get(accountant, accountant))
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
    _require(table, ("scope", "run", "composed", "basic", "budget", "refused"), "table")
    scopes = list(dict.fromkeys(table["scope"]))
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        fig, axes = _figure(len(scopes), size=(4.2, 3.6))
        for ax, scope in zip(axes, scopes):
            rows = table[table["scope"] == scope].sort_values("run")
            ok = rows[~rows["refused"].astype(bool)]
            ax.plot(ok["run"], ok["composed"], marker="o", color="C0", label="spent (composed, PRV)")
            ax.plot(ok["run"], ok["basic"], marker=".", ls="--", color="C1", label="sum of ε (basic composition)")
            ax.axhline(rows["budget"].iloc[0], color="C3", lw=1.5, label="budget")
            refused = rows[rows["refused"].astype(bool)]
            ax.scatter(refused["run"], np.full(len(refused), rows["budget"].iloc[0]), marker="X", s=120,
                       color="C3", zorder=3, label="refused: nothing spent")  # fmt: skip
            ax.set_title(scope.split("/")[-1].replace(":", " "), fontsize="medium")
            ax.set_xlabel("training run")
            ax.set_xticks(rows["run"])
            ax.set_ylim(0, 1.15 * max(rows["basic"].max(), rows["budget"].iloc[0]))
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
    _require(table, ("method", "seed", "metric", "value"), "table")
    rows = table[table["metric"] == metric]
    if rows.empty:
        raise ValueError(f"Unknown metric={metric!r}; the table has: {sorted(table['metric'].unique())}.")
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        fig, [ax] = _figure(1, size=(6.4, 3.8))
        order = list(dict.fromkeys(rows["method"]))
        sns.stripplot(rows, x="method", y="value", order=order, color="0.4", size=6, ax=ax)
        sns.pointplot(rows, x="method", y="value", order=order, errorbar="sd", color="C0",
                      linestyle="none", markers="D", capsize=0.15, ax=ax)  # fmt: skip
        ax.set_xlabel("")
        ax.set_ylabel(f"test {metric.upper() if metric == 'auc' else metric} (mean ± sd over seeds)")
    return fig


def risk_curves(table: pd.DataFrame) -> Figure:
    """Highest true-positive rate of any membership-inference attack, against epsilon.

    Args:
        table: columns ``epsilon``, ``fpr``, ``bound`` (which bound: e.g. "from (ε, δ)",
            "from the mechanism"), ``tpr``. One panel per false-positive rate.
    """
    _require(table, ("epsilon", "fpr", "bound", "tpr"), "table")
    fprs = sorted(table["fpr"].unique())
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        fig, axes = _figure(len(fprs), size=(4.6, 3.8))
        for ax, fpr in zip(axes, fprs):
            rows = table[table["fpr"] == fpr]
            for i, (bound, part) in enumerate(rows.groupby("bound", sort=False)):
                part = part.sort_values("epsilon")
                ax.plot(part["epsilon"], part["tpr"], marker="o", color=f"C{i}", label=bound)
            ax.axhline(fpr, color="0.4", ls=":", label="guessing (TPR = FPR)")
            ax.set_xscale("log")
            ax.set_yscale("log")
            epsilons = sorted(rows["epsilon"].unique())
            ax.xaxis.set_major_locator(FixedLocator(epsilons))
            ax.xaxis.set_major_formatter(FixedFormatter([f"{e:g}" for e in epsilons]))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xlabel(X_LABEL)
            ax.set_title(f"at FPR = {fpr:.1%}", fontsize="medium")
        axes[0].set_ylabel("attack TPR, upper bound (log)")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False)
    return fig
