"""Per-sample gradients with ``torch.func`` and their clipping, the core of DP-SGD.

``vmap(grad(loss))`` differentiates the loss of each example separately in one batched call
(the functorch approach; Opacus's hooks compute the same quantities layer by layer).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from privkit.engine import per_sample_loss

Grads = dict[str, Tensor]  # parameter name -> (B, *parameter shape)
_FLOAT_MARGIN = 1e-5  # relative: more than the float32 rounding error of a norm


def per_sample_gradients(model: nn.Module, images: Tensor, labels: Tensor) -> Grads:
    """Gradient of each example's loss: images (B, C, H, W), labels (B, L) -> name -> (B, ...).

    >>> from privkit.models import create_model
    >>> g = per_sample_gradients(create_model("cnn"), torch.zeros(3, 1, 28, 28), torch.ones(3, 1))
    >>> tuple(g["classifier.3.weight"].shape)
    (3, 1, 32)
    """
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss_of_one(p: Grads, x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(model, (p, buffers), (x.unsqueeze(0),))  # (1, L)
        return per_sample_loss(logits, y.unsqueeze(0)).sum()

    return vmap(grad(loss_of_one), in_dims=(None, 0, 0))(params, images, labels)


def per_sample_norms(grads: Grads) -> Tensor:
    """The L2 norm of each example's whole gradient (all parameters together): (B,)."""
    flat = [g.reshape(g.shape[0], -1) for g in grads.values()]
    return torch.cat(flat, dim=1).norm(dim=1)


def clip(grads: Grads, max_grad_norm: float) -> Grads:
    """Scale each example's gradient to norm at most ``max_grad_norm`` (Abadi et al. 2016).

    The factor is Opacus's ``min(1, C / (norm + 1e-6))`` with C shrunk by a relative 1e-5,
    since float32 rounding of the norm could otherwise leave a clipped norm a hair above C.
    """
    bound = max_grad_norm * (1 - _FLOAT_MARGIN)
    factor = (bound / (per_sample_norms(grads) + 1e-6)).clamp(max=1.0)  # (B,)
    return {k: g * factor.view(-1, *[1] * (g.dim() - 1)) for k, g in grads.items()}
