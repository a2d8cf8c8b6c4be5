"""Poisson sampling, the batch selection that the privacy accountants assume.

Each example joins each batch independently with probability ``sample_rate``, so batch sizes
vary (Abadi et al. 2016; Mironov, Talwar & Zhang 2019). Shuffled fixed-size batches would be a
different mechanism, for which the usual accountants under-report epsilon.

Uniforms are drawn in float64. A float32 uniform takes 2^24 values, so ``rand < q`` would
include an example with probability up to 2^-24 above ``q`` (``q`` itself rounded to float32),
more than the accountant is told; in float64 the excess is at most 2^-53.
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
    draws = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64)
    return torch.nonzero(draws < sample_rate).squeeze(1)
