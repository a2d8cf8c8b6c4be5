"""DP-SGD training engines: one optimisation step on one Poisson-sampled batch.

A backend wraps a model and owns its optimiser. ``train.py`` draws the Poisson batches
(``sampling.py``), asks the backend for a step per batch, and accounts for the mechanism;
every backend must implement exactly the mechanism the accountant is told about:

    update = (sum_i clip(g_i, max_grad_norm) + N(0, (noise_multiplier * max_grad_norm)^2 I))
             / expected_batch_size                                   (Abadi et al. 2016)

``nonprivate`` is the same loop without clipping and noise, so a baseline differs from a
private run only in the mechanism.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from privkit import _validate


def per_sample_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Binary cross-entropy per example, averaged over its labels: (B, L), (B, L) -> (B,).

    One logit per label serves both binary (L = 1) and multi-label (L = 14) tasks.
    """
    loss = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return loss.mean(dim=1)


class Backend(Protocol):
    """What ``train`` needs from an engine."""

    name: str
    model: nn.Module  # the trained network, usable for prediction

    def step(self, images: Tensor, labels: Tensor) -> float:
        """One update on a Poisson batch (possibly empty); returns the summed loss."""
        ...


def create_backend(
    name: str,
    model: nn.Module,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: float,
    lr: float,
    momentum: float,
    generator: torch.Generator,
) -> Backend:
    """Build backend ``name`` (``opacus`` or ``nonprivate``) around ``model``."""
    from privkit.engine.nonprivate import NonPrivateBackend
    from privkit.engine.opacus_backend import OpacusBackend

    backends = {"opacus": OpacusBackend, "nonprivate": NonPrivateBackend}
    _validate.one_of(backends, backend=name)
    if name == "nonprivate":
        return NonPrivateBackend(
            model, expected_batch_size=expected_batch_size, lr=lr, momentum=momentum
        )
    return backends[name](
        model,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size,
        lr=lr,
        momentum=momentum,
        generator=generator,
    )


DP_BACKENDS: tuple[str, ...] = ("fast", "opacus")  # fast: engine/fast.py, trained in stacks
