"""Exponential moving average (EMA) of the parameters along DP-SGD's trajectory.

De et al. (2022), "Unlocking high-accuracy differentially private image classification through
scale", https://arxiv.org/abs/2204.13650, Section 3.2: evaluating an average of the iterates
instead of the last one averages out part of DP-SGD's noise. The average is computed from the
released noisy iterates only (post-processing), so it costs no privacy.
"""

from __future__ import annotations

from torch import Tensor


class ParameterAverage:
    """``average <- d * average + (1 - d) * params`` after each update, with the warm-up of
    TensorFlow's ``ExponentialMovingAverage``: ``d = min(decay, (1 + t) / (10 + t))`` at update
    ``t``, so that the first iterates, still near the initialisation, fade quickly.

    >>> import torch
    >>> average = ParameterAverage(0.5)
    >>> for value in (0.0, 4.0, 8.0):
    ...     average.update({"w": torch.tensor(value)})
    >>> round(average.value["w"].item(), 3)  # 0, then (2/11) 0 + (9/11) 4, then (1/4) 36/11 + (3/4) 8
    6.818
    """

    def __init__(self, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"Expected decay={decay!r} in (0, 1).")
        self.decay = decay
        self.updates = 0
        self.value: dict[str, Tensor] = {}

    def update(self, params: dict[str, Tensor]) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        if not self.value:
            self.value = {k: p.detach().clone() for k, p in params.items()}
        else:
            self.value = {k: d * self.value[k] + (1 - d) * params[k].detach() for k in self.value}
        self.updates += 1
