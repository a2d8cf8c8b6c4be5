"""The one epsilon axis of every figure drawn against the privacy budget.

Private results sit at their epsilon on a base-2 log axis whose ticks are exactly the epsilons
present (``0.5, 1, 2, ...``; no minor ticks). A non-private result (epsilon = inf) is one more
position, two octaves right of the largest epsilon, ticked "non-private" and set off by a dotted
vertical line. It is drawn like the series' private points (same colour and marker, its own error
bar), but never joined to them: no epsilon lies between.

One position rather than a horizontal reference line, because a figure may hold many series
(recipes, groups, federated methods), each with its own non-private result and interval, and
because random guessing, a budget or zero gap are the horizontal lines of some figures.

>>> axis = EpsilonAxis.of([8.0, 1.0, float("inf"), 1.0])
>>> axis.epsilons, axis.nonprivate, axis.x([1.0, float("inf")]).tolist()
((1.0, 8.0), True, [1.0, 32.0])
>>> axis.labels()
['1', '8', 'non-\\nprivate']
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes

X_LABEL = "privacy budget ε (log scale;\nsmaller = more private)"
NONPRIVATE_TICK = "non-\nprivate"
_GAP = 4.0  # the non-private position, in multiples of the largest epsilon: two octaves
_MARGIN = 2**0.5  # half an octave of room beyond the outer ticks


@dataclass(frozen=True)
class EpsilonAxis:
    """Where each epsilon of a figure sits on its x axis.

    Attributes:
        epsilons: the finite epsilons present, ascending, each once.
        nonprivate: whether a non-private (infinite epsilon) result is drawn.
    """

    epsilons: tuple[float, ...]
    nonprivate: bool

    @classmethod
    def of(cls, epsilons: Iterable[float]) -> EpsilonAxis:
        """The axis of a figure whose results have these epsilons (``inf``: non-private).

        Raises:
            ValueError: there are no epsilons, or one is not positive (or NaN).
        """
        values = np.asarray(list(epsilons), dtype=float)
        bad = sorted({f"{e:g}" for e in values if not e > 0})
        if bad:
            raise ValueError(
                f"Expected every epsilon > 0 (inf for non-private); got {', '.join(bad)}."
            )
        if not len(values):
            raise ValueError("Expected at least one epsilon to place on the axis; got none.")
        finite = sorted({float(e) for e in values if np.isfinite(e)})
        return cls(tuple(finite), bool(np.isinf(values).any()))

    @property
    def nonprivate_x(self) -> float:
        """The x position of non-private results."""
        return (self.epsilons[-1] if self.epsilons else 1.0) * _GAP

    def x(self, epsilons: Iterable[float], *, shift: float = 1.0) -> np.ndarray:
        """x positions of ``epsilons``, times ``shift`` (e.g. ``1.06``: side-by-side series)."""
        e = np.asarray(list(epsilons), dtype=float)
        return np.where(np.isinf(e), self.nonprivate_x, e) * shift

    def ticks(self) -> list[float]:
        return [*self.epsilons, *([self.nonprivate_x] if self.nonprivate else [])]

    def labels(self) -> list[str]:
        return [f"{e:.3g}" for e in self.epsilons] + ([NONPRIVATE_TICK] if self.nonprivate else [])

    def draw(self, ax: Axes, *, label: str = X_LABEL) -> None:
        """Set ``ax``'s x scale, ticks, limits and label; draw the non-private separator."""
        ax.set_xscale("log", base=2)
        ticks = self.ticks()
        ax.set_xticks(ticks, self.labels())
        ax.minorticks_off()
        ax.set_xlim(ticks[0] / _MARGIN, ticks[-1] * _MARGIN)
        if self.nonprivate and self.epsilons:
            ax.axvline(self.epsilons[-1] * _GAP**0.5, color="0.6", linestyle=":", linewidth=1)
        ax.set_xlabel(label)


def plot_series(
    ax: Axes,
    axis: EpsilonAxis,
    epsilon: Iterable[float],
    y: Iterable[float],
    *,
    color: str,
    low: Iterable[float] | None = None,
    high: Iterable[float] | None = None,
    label: str | None = None,
    shift: float = 1.0,
    marker: str = "o",
    linestyle: str = "-",
    **style,
) -> None:
    """One series against epsilon: private points joined in epsilon order, the non-private point
    alone, in the same colour and marker; error bars from ``low`` to ``high`` when given.

    The legend entry (``label``) belongs to the private points, or to the non-private point when
    there are none. Extra ``style`` goes to ``Axes.errorbar`` (e.g. ``markersize``).
    """
    e = np.asarray(list(epsilon), dtype=float)
    order = np.argsort(e, kind="stable")
    e, y = e[order], np.asarray(list(y), dtype=float)[order]
    err = None
    if low is not None and high is not None:
        low = np.asarray(list(low), dtype=float)[order]
        high = np.asarray(list(high), dtype=float)[order]
        err = np.vstack([y - low, high - y])
        style = {"capsize": 3, **style}
    x = axis.x(e, shift=shift)
    finite = np.isfinite(e)
    for part, line in ((finite, linestyle), (~finite, "none")):
        if part.any():
            yerr = None if err is None else err[:, part]
            ax.errorbar(
                x[part],
                y[part],
                yerr=yerr,
                color=color,
                marker=marker,
                linestyle=line,
                label=label,
                **style,
            )
            label = None  # one legend entry per series
