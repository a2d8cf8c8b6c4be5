"""Figures of gradient-inversion attacks: true X-rays above, reconstructions below.

Built on ``matplotlib.figure.Figure`` without ``pyplot`` (see :mod:`privkit.plots`).

>>> import pandas as pd, torch
>>> from privkit.attacks.reconstruction import AttackResult
>>> images = torch.zeros(2, 1, 28, 28)
>>> table = pd.DataFrame([{"defense": "none", "image": i, "metric": m, "value": 1.0}
...                       for i in range(2) for m in ("psnr", "ssim")])
>>> result = AttackResult(images=images, reconstructions={"none": images}, table=table)
>>> fig = reconstruction_grid(result)
>>> [ax.get_ylabel().splitlines()[0] for ax in fig.axes if ax.get_ylabel()]
['original', 'none']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd
from matplotlib.figure import Figure

from privkit.plots._figure import theme

if TYPE_CHECKING:  # figures import no workflow: an AttackResult is only read
    from privkit.attacks.reconstruction import AttackResult


def reconstruction_grid(
    results: AttackResult | Sequence[AttackResult],
    *,
    bounds: tuple[float, float] = (-1.0, 1.0),
    cell_size: float = 1.15,
) -> Figure:
    """One block per attacked batch: the true images in the top row, then one row per defence.

    Each defence's row is labelled with its name, its noise multiplier sigma and the mean PSNR
    (dB) and SSIM of its reconstructions against the true images (each reconstruction is
    already matched to its true image, so columns line up).

    Args:
        results: one :class:`AttackResult` per batch (e.g. batch sizes 1 and 4), side by side;
            all must hold the same defences.
        bounds: the images' value range, mapped to black and white.
        cell_size: inches per image.

    Raises:
        ValueError: no results, or results with different defences.
    """
    results = list(results) if isinstance(results, Sequence) else [results]
    if not results:
        raise ValueError("Expected at least one AttackResult in results, got none.")
    names = list(results[0].reconstructions)
    for r in results[1:]:
        if list(r.reconstructions) != names:
            got = list(r.reconstructions)
            raise ValueError(f"Expected every result to hold the defences {names}; got {got}.")
    widths = [len(r.images) + 1.6 for r in results]  # images plus room for the row labels
    size = (cell_size * sum(widths), cell_size * (len(names) + 1) + 0.5)
    with theme():
        fig = Figure(figsize=size, layout="constrained")
        blocks = fig.subfigures(1, len(results), width_ratios=widths, squeeze=False)[0]
        for block, result in zip(blocks, results):
            n = len(result.images)
            axes = block.subplots(len(names) + 1, n, squeeze=False)
            rows = [("original", result.images)]
            rows += [
                (_row_label(result.table, name), result.reconstructions[name]) for name in names
            ]
            for row, (label, images) in zip(axes, rows):
                for ax, image in zip(row, images):
                    ax.imshow(image[0].cpu().numpy(), cmap="gray", vmin=bounds[0], vmax=bounds[1])
                    ax.set_xticks([])
                    ax.set_yticks([])
                row[0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
            block.suptitle(f"batch of {n} image{'s' if n > 1 else ''}", fontsize=11)
    return fig


def _row_label(table: pd.DataFrame, name: str) -> str:
    """``name``, its noise multiplier if any, the mean PSNR and SSIM of its images."""
    rows = table[table["defense"] == name]
    means = rows.groupby("metric")["value"].mean()
    lines = [name]
    if "noise_multiplier" in rows and rows["noise_multiplier"].max() > 0:
        lines.append(f"σ={rows['noise_multiplier'].iloc[0]:.3g}")
    nan = float("nan")
    lines.append(f"{means.get('psnr', nan):.1f} dB · SSIM {means.get('ssim', nan):.2f}")
    return "\n".join(lines)
