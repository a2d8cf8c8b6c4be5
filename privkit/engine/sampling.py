"""Poisson sampling, the batch selection that the privacy accountants assume.

Each example joins each batch independently with probability ``sample_rate``, so batch sizes
vary (Abadi et al. 2016; Mironov, Talwar & Zhang 2019). Shuffled fixed-size batches would be a
different mechanism, for which the usual accountants under-report epsilon.
"""

from __future__ import annotations

import torch
from torch import Tensor


def poisson_indices(n: int, sample_rate: float, generator: torch.Generator) -> Tensor:
    """Indices of a Poisson sample of ``range(n)``; may be empty.

    >>> g = torch.Generator().manual_seed(0)
    >>> idx = poisson_indices(10_000, 0.1, g)
    >>> 900 < len(idx) < 1100
    True
    """
    draws = torch.rand(n, generator=generator, device=generator.device)
    return torch.nonzero(draws < sample_rate).squeeze(1)
