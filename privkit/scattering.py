"""The 2-D wavelet scattering transform: fixed, hand-crafted image features for DP-SGD.

Tramèr & Boneh (2021), "Differentially private learning needs better features (or much more
data)", https://arxiv.org/abs/2011.11660, found that a linear model or small CNN on ScatterNet
features (Mallat 2012; Bruna & Mallat 2013, https://arxiv.org/abs/1203.1513) beats end-to-end
CNNs under DP-SGD: the features cost no privacy (they are not learned) and the model on top
has few parameters for the noise to drown.

This module computes exactly what Kymatio's ``Scattering2D`` computes (the same Morlet filter
bank, padding and Fourier-domain subsampling; ``tests/test_scattering.py`` compares them), but
with out-of-place operations only, so that ``torch.func.vmap`` can compute per-sample gradients
through it.
"""

from __future__ import annotations

import torch
from kymatio.scattering2d.filter_bank import filter_bank
from kymatio.scattering2d.utils import compute_padding
from torch import Tensor, nn

from privkit import _validate


def n_coefficients(J: int, L: int) -> int:
    """Scattering channels per input channel up to order 2: 1 + J L + L^2 J (J - 1) / 2.

    >>> n_coefficients(2, 8)
    81
    """
    return 1 + J * L + L * L * J * (J - 1) // 2


def _periodize(x: Tensor, k: int) -> Tensor:
    """Subsampling by ``k`` in space is periodisation in frequency: (..., M, N) -> (..., M/k, N/k)."""
    if k == 1:
        return x
    m, n = x.shape[-2:]
    return x.reshape(*x.shape[:-2], k, m // k, k, n // k).sum(-2).sum(-3) / (k * k)  # fast on CPU


class Scattering(nn.Module):
    """Scattering coefficients up to order 2 at scale ``2**J`` with ``L`` angles.

    (B, C, H, W) -> (B, C * n_coefficients(J, L), H / 2**J, W / 2**J); no parameters. Inputs
    are MedMNIST's [-1, 1] images, mapped to [0, 1] as in Tramèr & Boneh's code.
    """

    def __init__(self, image_size: int = 28, J: int = 2, L: int = 8) -> None:
        super().__init__()
        _validate.positive_int(J=J)
        _validate.positive_int(L=L)
        if image_size % 2**J:
            raise ValueError(f"Expected image_size={image_size} to be a multiple of 2**J = {2**J}.")
        self.J, self.L = J, L
        padded, _ = compute_padding(image_size, image_size, J)
        self.pad = ((padded - image_size) // 2, (padded - image_size + 1) // 2)
        bank = filter_bank(padded, padded, J, L)
        as_tensor = lambda f: torch.as_tensor(f, dtype=torch.float32)  # noqa: E731
        # Buffers (not persistent: rebuilt from J, L) so that they follow ``.to(device)``:
        # the low-pass filter at resolutions 0..J-1, wavelet n = (j, theta) at resolutions 0..j.
        for r, f in enumerate(bank["phi"]["levels"]):
            self.register_buffer(f"phi_{r}", as_tensor(f), persistent=False)
        self.scales = [p["j"] for p in bank["psi"]]  # j of each wavelet, in Kymatio's order
        for n, p in enumerate(bank["psi"]):
            for r, f in enumerate(p["levels"]):
                self.register_buffer(f"psi_{n}_{r}", as_tensor(f), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        J = self.J
        top, bottom = self.pad
        padded = nn.functional.pad((x + 1) / 2, (top, bottom, top, bottom), mode="reflect")

        def low_pass(u: Tensor, r: int) -> Tensor:  # u at resolution r -> averaged at 2**J
            return torch.fft.ifft2(_periodize(u * getattr(self, f"phi_{r}"), 2 ** (J - r))).real[
                ..., 1:-1, 1:-1
            ]

        def modulus(u: Tensor, n: int, r: int) -> Tensor:  # |u * psi_n|, in frequency, at scale j_n
            psi = getattr(self, f"psi_{n}_{r}")
            return torch.fft.fft2(
                torch.fft.ifft2(_periodize(u * psi, 2 ** (self.scales[n] - r))).abs()
            )

        u0 = torch.fft.fft2(padded)
        first, second = [low_pass(u0, 0)], []
        for n1, j1 in enumerate(self.scales):
            u1 = modulus(u0, n1, 0)
            first.append(low_pass(u1, j1))
            second += [
                low_pass(modulus(u1, n2, j1), j2) for n2, j2 in enumerate(self.scales) if j2 > j1
            ]
        coefficients = torch.stack(first + second, dim=-3)  # (B, C, K, H', W'), Kymatio's order
        return coefficients.flatten(-4, -3)
