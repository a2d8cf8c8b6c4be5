"""The ``fast`` backend: K models trained at once with compiled ``torch.func`` DP-SGD.

Every model of a stack shares one architecture and optimiser settings; each has its own
initialisation, seed, noise multiplier, clipping norm, Poisson draws and (optionally) its own
subset of the training data, as the shadow models of a membership-inference attack need.
Parameters are stacked (leading dimension K) and one ``vmap`` over models of a ``vmap`` over
examples computes all per-sample gradients in one call. A stack of one is the single-model
backend, so a model trained alone and inside a stack follow the same code.

Fixed-shape Poisson batches: each model draws an exact Poisson sample, which is padded with
weight-0 rows to ``max_batch`` so that shapes stay static for ``torch.compile``.
A draw larger than ``max_batch`` is never truncated: the step processes it in several chunks
of ``max_batch`` (same shapes, no recompilation) and sums them, so the mechanism stays exactly
the Poisson-subsampled Gaussian mechanism the accountant is told about, whatever the draw.
``max_batch`` is therefore chosen for speed, not safety: about 3.7 standard deviations above
the expected batch, so that a second chunk is needed in 1 step of 10,000.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from scipy.stats import binom
from torch import Tensor, nn
from torch.func import stack_module_state, vmap

from privkit.engine.averaging import ParameterAverage
from privkit.engine.per_sample import Params, clipped_sum, per_sample_grad_fn

OVERFLOW_PROBABILITY = 1e-4  # per step and model, of a draw above max_batch (then: 2 chunks)


def max_batch_size(n: int, sample_rate: float) -> int:
    """The padded batch size: a Poisson draw exceeds it with probability < 1e-4.

    For examples with different rates (individualised privacy), give their mean rate: the
    binomial's upper tail bounds that of the sum of unequal Bernoullis (Hoeffding 1956).

    >>> max_batch_size(4708, 256 / 4708)
    317
    """
    return max(1, int(binom.isf(OVERFLOW_PROBABILITY, n, sample_rate)) + 1)


def compile_by_default(device: torch.device) -> bool:
    """Compile on CUDA (where it pays), run eagerly elsewhere; ``PRIVKIT_COMPILE=0/1`` decides."""
    flag = os.environ.get("PRIVKIT_COMPILE")
    return device.type == "cuda" if flag is None else flag == "1"


class FastStack:
    """DP-SGD for K models of one architecture at once (``vmap`` over stacked parameters)."""

    def __init__(
        self,
        models: Sequence[nn.Module],
        *,
        noise_multipliers: Sequence[float],
        max_grad_norms: Sequence[float],
        expected_batch_sizes: Sequence[float],
        lr: float,
        momentum: float,
        generators: Sequence[torch.Generator],
        max_batch: int,
        ema: float = 0.0,
        compile: bool | None = None,
    ) -> None:
        self.models = list(models)
        self.device = next(self.models[0].parameters()).device
        self.compiled = compile_by_default(self.device) if compile is None else compile
        # Static shapes only matter to the compiler: eagerly, batches are the exact draw.
        self.max_batch: int | None = max_batch if self.compiled else None
        self.params, self.buffers = stack_module_state(self.models)  # name -> (K, ...)
        self.params = {k: v.detach() for k, v in self.params.items()}
        self.momentum_buffers: Params | None = None
        self.average = (
            ParameterAverage(ema) if ema else None
        )  # evaluated instead of the last iterate
        self.lr, self.momentum = lr, momentum
        self.generators = list(generators)
        as_tensor = lambda values: torch.tensor(values, dtype=torch.float32, device=self.device)  # noqa: E731
        self.sigmas = as_tensor(noise_multipliers)  # (K,)
        self.clips = as_tensor(max_grad_norms)  # (K,); inf = no clipping
        self.batch_sizes = as_tensor(expected_batch_sizes)  # (K,)
        # Noise std sigma * C, written so that a non-private member (0 noise, C = inf) gets 0.
        self.noise_std = torch.where(self.sigmas > 0, self.sigmas * self.clips, 0.0)
        self.noisy = [s > 0 for s in noise_multipliers]
        if len({len(self.models), len(self.generators), len(self.sigmas), len(self.clips)}) != 1:
            raise ValueError("Give one noise multiplier, clipping norm and generator per model.")

        grads_of = per_sample_grad_fn(self.models[0])

        def one_model(
            params: Params, buffers: Params, x: Tensor, y: Tensor, w: Tensor, c: Tensor
        ) -> tuple[Params, Tensor]:
            grads, losses = grads_of(params, buffers, x, y)
            return clipped_sum(grads, c, w), (losses * w).sum()

        summed = vmap(one_model)  # over the K models
        self._summed = torch.compile(summed, dynamic=False) if self.compiled else summed

    def step(self, images: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
        """One DP-SGD update of every model from padded batches.

        Args:
            images: (K, W, C, H, W'), each model's Poisson sample, padded; W a multiple of
                ``max_batch`` when compiled, any width when eager.
            labels: (K, W, L).
            weights: (K, W), 1 for a sampled example, 0 for padding.

        Returns:
            (K,) each model's summed loss over its batch (before the update).
        """
        total: Params = {k: torch.zeros_like(v) for k, v in self.params.items()}
        loss = torch.zeros(len(self.models), device=self.device)
        chunk = self.max_batch or max(1, images.shape[1])
        for start in range(0, images.shape[1], chunk):
            part = slice(start, start + chunk)
            sums, losses = self._summed(
                self.params,
                self.buffers,
                images[:, part],
                labels[:, part],
                weights[:, part],
                self.clips,
            )
            total = {k: total[k] + sums[k] for k in total}
            loss = loss + losses
        noise = self._noise()
        grads = {
            k: (total[k] + noise[k]) / self.batch_sizes.view(-1, *[1] * (v.dim() - 1))
            for k, v in self.params.items()
        }  # (sum of clipped gradients + N(0, sigma^2 C^2)) / expected batch size, per model
        if self.momentum_buffers is None:  # torch.optim.SGD's momentum, dampening 0
            self.momentum_buffers = {k: g.clone() for k, g in grads.items()}
        else:
            self.momentum_buffers = {
                k: self.momentum * self.momentum_buffers[k] + grads[k] for k in grads
            }
        self.params = {k: p - self.lr * self.momentum_buffers[k] for k, p in self.params.items()}
        if self.average:
            self.average.update(self.params)
        return loss

    def restart(self, params: Params, momentum_buffers: Params | None = None) -> None:
        """Continue from ``params`` (name -> (K, ...)) and ``momentum_buffers`` (``None``: no
        momentum yet), as a federated site does each round; the parameter average restarts."""
        self.params = {k: v.detach() for k, v in params.items()}
        self.momentum_buffers = momentum_buffers
        if self.average:
            self.average = ParameterAverage(self.average.decay)

    def _noise(self) -> Params:
        """Gaussian noise of std sigma_k * C_k per model, each from its own generator; a model
        without noise draws none (its generator then serves its Poisson draws only, as in the
        ``nonprivate`` backend)."""
        sizes = [v[0].numel() for v in self.params.values()]
        flat = (
            torch.stack(
                [
                    torch.randn(sum(sizes), generator=g, device=self.device)
                    if noisy
                    else torch.zeros(sum(sizes), device=self.device)
                    for g, noisy in zip(self.generators, self.noisy)
                ]
            )
            * self.noise_std[:, None]
        )  # (K, total parameters)
        parts = torch.split(flat, sizes, dim=1)
        return {k: part.view_as(v) for (k, v), part in zip(self.params.items(), parts)}

    def unstacked(self) -> list[nn.Module]:
        """The K trained models as ordinary modules (their parameter averages with ``ema``)."""
        params = self.average.value if self.average and self.average.value else self.params
        for i, model in enumerate(self.models):
            model.load_state_dict({k: v[i] for k, v in params.items()}, strict=False)
        return self.models


def padded_poisson(
    sample_rates: Tensor,
    generators: Sequence[torch.Generator],
    max_batch: int | None,
) -> tuple[Tensor, Tensor]:
    """Each model's Poisson sample, padded to a multiple of ``max_batch`` (``None``: to the
    largest draw of the K models).

    Args:
        sample_rates: (K, n), the probability that model k's batch holds example i, drawn
            independently per example: 0 for an example the model may not use, the same rate
            for all others in plain DP-SGD, a rate per privacy group in individualised DP-SGD.
        generators: one per model; each draws ``n`` uniforms per step.
        max_batch: the padded width; a larger draw gets more chunks, never truncation.
            ``None`` pads only to the largest draw (for eager execution).

    Returns:
        indices (K, W) into the training set and weights (K, W) in {0, 1}, W a multiple of
        ``max_batch``.
    """
    n = sample_rates.shape[1]
    draws = torch.stack(
        [  # float64: see privkit.engine.sampling
            torch.rand(n, generator=g, device=sample_rates.device, dtype=torch.float64)
            for g in generators
        ]
    )
    chosen = draws < sample_rates.to(torch.float64)  # (K, n); a rate of 0 is never chosen
    largest = int(chosen.sum(dim=1).max())  # the one host sync per step
    chunk = max_batch or max(1, largest)
    width = max(1, math.ceil(largest / chunk)) * chunk
    order = torch.argsort((~chosen).to(torch.int8), dim=1, stable=True)[:, : min(width, n)]
    weights = torch.gather(chosen, 1, order).to(torch.float32)  # chosen examples come first
    if width > n:  # fewer examples than one padded batch: pad with weight-0 rows
        order = nn.functional.pad(order, (0, width - n))
        weights = nn.functional.pad(weights, (0, width - n))
    return order, weights
