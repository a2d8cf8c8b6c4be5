"""The Gaussian mechanism's noise, added to a sum of bounded contributions.

    release = sum_i x_i + N(0, (noise_multiplier * sensitivity)^2 I)       (Dwork & Roth 2014)

where each contribution ``x_i`` has L2 norm at most ``sensitivity`` (a clipped gradient, a
clipped site update, a term in [-1, 1]). This module and the DP-SGD backends are the only
places privkit draws privacy noise; the generator is the run's (``privkit.randomness``:
OS entropy unless a seeded research mode was asked for), so that no recorded value rebuilds it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from privkit import _validate


def add_noise(
    summed: dict[str, Tensor], *, std: float, generator: torch.Generator
) -> dict[str, Tensor]:
    """``summed`` (a sum of contributions, per parameter) plus N(0, std^2) on every entry.

    Drawn on the generator's device in the tensors' dtype, parameter by parameter in order.

    >>> g = torch.Generator().manual_seed(0)
    >>> out = add_noise({"w": torch.zeros(2, 3)}, std=0.0, generator=g)
    >>> out["w"].shape, bool(out["w"].eq(0).all())
    (torch.Size([2, 3]), True)
    """
    _validate.in_range(0, float("inf"), high_inclusive=False, std=std)
    if std == 0:
        return dict(summed)
    return {
        k: v
        + std
        * torch.randn(v.shape, generator=generator, device=generator.device, dtype=v.dtype).to(
            v.device
        )
        for k, v in summed.items()
    }


def gaussian_sum(values: Tensor, *, std: float, generator: torch.Generator) -> Tensor:
    """The sum over the first axis of ``values`` plus N(0, std^2 I): (n, ...) -> (...).

    >>> g = torch.Generator().manual_seed(0)
    >>> gaussian_sum(torch.ones(4, 2), std=0.0, generator=g).tolist()
    [4.0, 4.0]
    """
    return add_noise({"sum": values.sum(dim=0)}, std=std, generator=generator)["sum"]
