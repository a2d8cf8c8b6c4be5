"""Per-sample gradients with ``torch.func`` and their clipping, the core of DP-SGD.

``vmap(grad(loss))`` differentiates the loss of each example separately in one batched call
(the functorch approach; Opacus's hooks compute the same quantities layer by layer).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from privkit.engine import per_sample_loss

Params = dict[str, Tensor]  # parameter name -> tensor
Grads = dict[str, Tensor]  # parameter name -> (B, *parameter shape)
_FLOAT_MARGIN = 1e-5  # relative: more than the float32 rounding error of a norm


def per_sample_grad_fn(
    model: nn.Module,
) -> Callable[[Params, Params, Tensor, Tensor], tuple[Grads, Tensor]]:
    """``f(params, buffers, images (B, C, H, W), labels (B, L)) -> (Grads, losses (B,))`` for
    ``model``'s architecture; pure, so it can be vmapped over stacked models and compiled."""

    def loss_of_one(params: Params, buffers: Params, x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(model, (params, buffers), (x.unsqueeze(0),))  # (1, L)
        return per_sample_loss(logits, y.unsqueeze(0)).sum()

    return vmap(grad_and_value(loss_of_one), in_dims=(None, None, 0, 0))


def per_sample_gradients(model: nn.Module, images: Tensor, labels: Tensor) -> Grads:
    """Gradient of each example's loss: images (B, C, H, W), labels (B, L) -> name -> (B, ...).

    >>> from privkit.models import create_model
    >>> g = per_sample_gradients(create_model("cnn"), torch.zeros(3, 1, 28, 28), torch.ones(3, 1))
    >>> tuple(g["classifier.3.weight"].shape)
    (3, 1, 32)
    """
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    return per_sample_grad_fn(model)(params, buffers, images, labels)[0]


def per_sample_norms(grads: Grads) -> Tensor:
    """The L2 norm of each example's whole gradient (all parameters together): (B,)."""
    flat = [g.reshape(g.shape[0], -1) for g in grads.values()]
    return torch.cat(flat, dim=1).norm(dim=1)


def clip_factors(grads: Grads, max_grad_norm: float | Tensor) -> Tensor:
    """Per-example scale ``min(1, C / (norm + 1e-6))`` (Abadi et al. 2016; Opacus's form): (B,).

    C is shrunk by a relative 1e-5, since float32 rounding of the norm could otherwise leave a
    clipped norm a hair above C. ``C = inf`` clips nothing.
    """
    bound = max_grad_norm * (1 - _FLOAT_MARGIN)
    return (bound / (per_sample_norms(grads) + 1e-6)).clamp(max=1.0)


def clip(grads: Grads, max_grad_norm: float) -> Grads:
    """Scale each example's gradient to norm at most ``max_grad_norm``."""
    factor = clip_factors(grads, max_grad_norm)  # (B,)
    return {k: g * factor.view(-1, *[1] * (g.dim() - 1)) for k, g in grads.items()}


def clipped_sum(grads: Grads, max_grad_norm: float | Tensor, weights: Tensor) -> Params:
    """``sum_b weights[b] * clip(g_b)``: the DP-SGD sum; padded rows have weight 0."""
    factor = clip_factors(grads, max_grad_norm) * weights  # (B,)
    return {k: torch.einsum("b,b...->...", factor, g) for k, g in grads.items()}
