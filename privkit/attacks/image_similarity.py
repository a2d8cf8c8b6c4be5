"""How close a reconstructed image is to the true one: PSNR, SSIM, matching, re-identification.

PSNR and SSIM (Wang, Bovik, Sheikh & Simoncelli 2004, "Image quality assessment: from error
visibility to structural similarity") score a reconstruction against its true image; a batch's
reconstructions come in no particular order, so :func:`match` pairs them first (Hungarian
algorithm). :func:`identification_rank` asks the question that matters for a patient: is the
reconstruction closer to their X-ray than to everyone else's?
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from privkit import _validate


def _pair(images: Tensor | np.ndarray, reference: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    x = torch.as_tensor(images, dtype=torch.float64).detach().cpu()
    y = torch.as_tensor(reference, dtype=torch.float64).detach().cpu()
    if x.dim() != 4 or x.shape != y.shape:
        raise ValueError(
            f"Expected images and reference of the same shape (N, C, H, W), got "
            f"{tuple(x.shape)} and {tuple(y.shape)}."
        )
    return x, y


def psnr(images: Tensor, reference: Tensor, *, data_range: float = 2.0) -> np.ndarray:
    """Peak signal-to-noise ratio of each image, ``10 log10(data_range^2 / MSE)`` dB: (N,).

    ``data_range`` is the span of valid values (2 for privkit's [-1, 1]); identical images
    give ``inf``.

    >>> x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    >>> psnr(x + 0.1, x, data_range=1.0)  # MSE 0.01: 20 dB
    array([20.])
    """
    x, y = _pair(images, reference)
    _validate.in_range(
        0, math.inf, low_inclusive=False, high_inclusive=False, data_range=data_range
    )
    mse = (x - y).pow(2).flatten(1).mean(1)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(data_range**2 / mse.numpy())


def _gaussian_window(size: int, sigma: float) -> Tensor:
    k = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(k**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)  # (size, size), sums to 1


def ssim(
    images: Tensor,
    reference: Tensor,
    *,
    data_range: float = 2.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> np.ndarray:
    """Mean structural similarity of each image to its reference (Wang et al. 2004): (N,).

    Local means, variances and covariance are weighted by a normalised ``window_size`` square
    Gaussian window of standard deviation ``sigma``, at every position where the window fits
    (``valid``, as Wang et al.'s reference code); ``SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) /
    ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))`` with ``C_i = (k_i data_range)^2``,
    averaged over positions and channels.

    >>> x = torch.rand(2, 1, 16, 16)
    >>> ssim(x, x, data_range=1.0)
    array([1., 1.])
    """
    x, y = _pair(images, reference)
    _validate.in_range(
        0, math.inf, low_inclusive=False, high_inclusive=False, data_range=data_range
    )
    _validate.positive_int(window_size=window_size)
    if min(x.shape[-2:]) < window_size:
        raise ValueError(
            f"Expected images of at least window_size={window_size} pixels a side, got "
            f"{tuple(x.shape[-2:])}."
        )
    channels = x.shape[1]
    window = _gaussian_window(window_size, sigma).expand(channels, 1, window_size, window_size)

    def blur(z: Tensor) -> Tensor:
        return nn.functional.conv2d(z, window, groups=channels)  # valid positions only

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return ssim_map.flatten(1).mean(1).numpy()


def match(images: Tensor, reference: Tensor) -> np.ndarray:
    """For each reference image, the index of the reconstruction assigned to it: (N,).

    The assignment minimises the total mean squared error over one-to-one pairings
    (Hungarian algorithm, :func:`scipy.optimize.linear_sum_assignment`).

    >>> a = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])
    >>> match(a.flip(0), a)
    array([1, 0])
    """
    x, y = _pair(images, reference)
    cost = torch.cdist(y.flatten(1), x.flatten(1)).pow(2)  # (N ref, N rec)
    rows, cols = linear_sum_assignment(cost.numpy())
    return cols[np.argsort(rows)]


def identification_rank(
    images: Tensor, candidates: Tensor, truth: Sequence[int] | Tensor
) -> np.ndarray:
    """Rank of each image's true source among ``candidates`` by mean squared error: (N,).

    1 means the reconstruction is closer to its own X-ray than to any other candidate (the
    patient is re-identified); about ``len(candidates) / 2`` means it says nothing about
    which one it came from. Rank = 1 + the number of candidates strictly closer.

    Args:
        images: (N, C, H, W) reconstructions, each matched to its true image.
        candidates: (M, C, H, W) the pool, e.g. the whole training split.
        truth: N indices into ``candidates`` of the true images.

    >>> pool = torch.stack([torch.full((1, 2, 2), v) for v in (0.0, 1.0, 2.0)])
    >>> identification_rank(pool[[2, 0]] + 0.4, pool, [2, 0]).tolist()
    [1, 1]
    >>> identification_rank(pool[[2]] - 0.6, pool, [2]).tolist()
    [2]
    """
    truth = torch.as_tensor(truth, dtype=torch.long).cpu()
    pool = torch.as_tensor(candidates, dtype=torch.float64).detach().cpu()
    x = torch.as_tensor(images, dtype=torch.float64).detach().cpu()
    if x.dim() != 4 or pool.dim() != 4 or x.shape[1:] != pool.shape[1:] or truth.shape != (len(x),):
        raise ValueError(
            f"Expected images (N, C, H, W), candidates (M, C, H, W) and N indices in truth; "
            f"got {tuple(x.shape)}, {tuple(pool.shape)} and {tuple(truth.shape)}."
        )
    if len(truth) and not 0 <= int(truth.min()) <= int(truth.max()) < len(pool):
        raise ValueError(f"Expected truth in [0, {len(pool)}), got {truth.tolist()}.")
    dist = torch.cdist(x.flatten(1), pool.flatten(1))  # (N, M)
    own = dist.gather(1, truth[:, None])  # (N, 1)
    return (1 + (dist < own).sum(dim=1)).numpy()
