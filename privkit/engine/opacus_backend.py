"""The reference backend: Opacus's per-sample gradient hooks and DP optimiser.

Opacus (Yousefpour et al. 2021) computes per-sample gradients with module hooks, clips each
to ``max_grad_norm``, sums, adds Gaussian noise of standard deviation
``noise_multiplier * max_grad_norm`` and divides by the expected batch size. Batches come from
privkit's Poisson sampler on tensors already on the device, instead of Opacus's DataLoader.
"""

from __future__ import annotations

import warnings

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import Tensor, nn

from privkit.engine import per_sample_loss


class OpacusBackend:
    """DP-SGD through ``opacus.GradSampleModule`` and ``opacus.optimizers.DPOptimizer``."""

    name = "opacus"

    def __init__(
        self,
        model: nn.Module,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: float,
        lr: float,
        momentum: float,
        generator: torch.Generator,
    ) -> None:
        problems = ModuleValidator.validate(model, strict=False)
        if problems:
            raise ValueError(
                f"Model {type(model).__name__} cannot be trained with backend 'opacus': "
                + "; ".join(str(p) for p in problems)
            )
        self.model = model
        # Summed loss: per-sample gradients need no rescaling, and an empty batch is valid.
        self.module = GradSampleModule(model, batch_first=True, loss_reduction="sum")
        self.optimizer = DPOptimizer(
            torch.optim.SGD(self.module.parameters(), lr=lr, momentum=momentum),
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,  # divides (sum of clipped + noise)
            loss_reduction="mean",
            generator=generator,
        )

    def step(self, images: Tensor, labels: Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = per_sample_loss(self.module(images), labels).sum()
        with warnings.catch_warnings():  # inputs need no gradient; Opacus's hooks are fine
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            loss.backward()
        self.optimizer.step()
        return loss.item()
