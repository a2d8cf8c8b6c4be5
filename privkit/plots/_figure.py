"""What every figure shares: one seaborn theme, a new figure or the caller's axes, the check of
a table's columns, and saving to PNG and PDF.

Figures are built on ``matplotlib.figure.Figure`` directly, not through ``pyplot``: nothing
global is switched (no backend, no rcParams, no list of open figures), so they work unchanged
in JupyterLab (make the figure a cell's last expression to show it), in scripts and in tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib as mpl
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from privkit._io import atomic_write

_PALETTE = tuple(sns.color_palette("colorblind").as_hex())


def palette(k: int) -> str:
    """The ``k``-th colour of the theme's colour-blind palette, as a hex string.

    Figures pass these, not ``"C0"``: matplotlib resolves ``"C0"`` of a line only when the line
    is drawn, with whatever colour cycle is global then.

    >>> palette(0), palette(10) == palette(0)
    ('#0173b2', True)
    """
    return _PALETTE[k % len(_PALETTE)]


@contextlib.contextmanager
def theme() -> Iterator[None]:
    """The one look of privkit's figures, for the artists made inside the ``with`` block.

    Seaborn's ``whitegrid`` style and ``notebook`` context, and its colour-blind palette as the
    colour cycle of new axes (:func:`palette` names its colours). matplotlib's settings are
    restored on exit: a figure keeps its look, the caller's other figures are untouched.
    """
    rc = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook")}
    with mpl.rc_context({**rc, "axes.prop_cycle": mpl.cycler(color=list(_PALETTE))}):
        yield


def new_figure(
    panels: int,
    panel_size: tuple[float, float],
    *,
    extra_height: float = 0.0,
    ax: Axes | Sequence[Axes] | None = None,
    sharey: bool = False,
) -> tuple[Figure, list[Axes]]:
    """``panels`` axes side by side in a new figure, or the caller's ``ax`` and their figure.

    Call it inside :func:`theme`. A new figure has constrained layout, ``panel_size`` (width,
    height in inches) per panel and ``extra_height`` inches more for a legend or title below.

    Raises:
        ValueError: ``ax`` holds a number of axes other than ``panels``.
    """
    if ax is not None:
        axes = [ax] if isinstance(ax, Axes) else list(ax)
        if len(axes) != panels:
            raise ValueError(f"Expected one axes per panel ({panels}); got {len(axes)} in ax.")
        return axes[0].figure, axes
    width, height = panel_size
    fig = Figure(figsize=(width * panels, height + extra_height), layout="constrained")
    return fig, list(fig.subplots(1, panels, squeeze=False, sharey=sharey)[0])


def require_columns(table: pd.DataFrame, columns: Sequence[str], *, name: str = "table") -> None:
    """Raise unless ``table`` has every one of ``columns`` and at least one row.

    >>> require_columns(pd.DataFrame({"epsilon": [1.0]}), ["epsilon", "tpr"])
    Traceback (most recent call last):
    ...
    ValueError: Expected table to have columns epsilon, tpr; missing: tpr.
    """
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(
            f"Expected {name} to have columns {', '.join(columns)}; missing: {', '.join(missing)}."
        )
    if table.empty:
        raise ValueError(f"Expected rows in {name}; it is empty.")


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
