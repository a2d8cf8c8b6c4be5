"""Ordinary SGD on Poisson batches: the non-private baseline (epsilon = inf)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from privkit.engine import per_sample_loss


class NonPrivateBackend:
    """Plain SGD with the same batches and gradient scale as DP-SGD, without clip or noise."""

    name = "nonprivate"

    def __init__(
        self, model: nn.Module, *, expected_batch_size: float, lr: float, momentum: float
    ) -> None:
        self.model = model
        self.expected_batch_size = expected_batch_size
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)

    def step(self, images: Tensor, labels: Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = per_sample_loss(self.model(images), labels).sum()
        (loss / self.expected_batch_size).backward()
        self.optimizer.step()
        return loss.item()
