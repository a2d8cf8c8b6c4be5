"""The DP-SGD mechanism against independent references: batch-of-one gradients, hand-clipped
sums, the noise's standard deviation, and Poisson sampling's statistics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from privkit.engine import create_backend, per_sample_loss
from privkit.engine.sampling import poisson_indices
from privkit.models import create_model


def _batch(n: int = 6, labels: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=g)
    y = torch.randint(0, 2, (n, labels), generator=g).float()
    return x, y


def _reference_update(model: nn.Module, x, y, *, clip: float, batch: float) -> list[torch.Tensor]:
    """sum_i clip(g_i) / batch from gradients of batches of one, clipped by hand."""
    total = [torch.zeros_like(p) for p in model.parameters()]
    for i in range(len(x)):
        model.zero_grad()
        per_sample_loss(model(x[i : i + 1]), y[i : i + 1]).sum().backward()
        grads = [p.grad.detach().clone() for p in model.parameters()]
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        factor = min(1.0, clip / (norm.item() + 1e-6))
        total = [t + factor * g for t, g in zip(total, grads)]
    return [t / batch for t in total]


def _step_delta(
    backend_name: str, model: nn.Module, x, y, *, clip: float, noise: float, batch: float
):
    before = [p.detach().clone() for p in model.parameters()]
    backend = create_backend(
        backend_name,
        model,
        noise_multiplier=noise,
        max_grad_norm=clip,
        expected_batch_size=batch,
        lr=1.0,
        momentum=0.0,
        generator=torch.Generator().manual_seed(0),
    )
    backend.step(x, y)
    return [b - p.detach() for b, p in zip(before, model.parameters())]


@pytest.mark.parametrize("model_name", ["cnn", "resnet8"])
@pytest.mark.parametrize("labels", [1, 14])
def test_opacus_step_equals_clipped_batch_of_one_gradients(model_name: str, labels: int) -> None:
    torch.manual_seed(0)
    model = create_model(model_name, n_outputs=labels)
    x, y = _batch(labels=labels)
    expected = _reference_update(model, x, y, clip=0.05, batch=4)
    delta = _step_delta("opacus", model, x, y, clip=0.05, noise=0.0, batch=4)
    for d, e in zip(delta, expected):
        torch.testing.assert_close(d, e, atol=1e-6, rtol=1e-4)


def test_clipping_binds_and_is_not_skipped() -> None:
    # With a tiny clip every example is clipped: the update norm is at most n * C / batch.
    torch.manual_seed(0)
    model = create_model("cnn")
    x, y = _batch(n=5)
    delta = _step_delta("opacus", model, x, y, clip=1e-3, noise=0.0, batch=5)
    norm = torch.sqrt(sum((d**2).sum() for d in delta)).item()
    assert norm <= 1e-3 * (1 + 1e-4)
    unclipped = _step_delta("nonprivate", create_model("cnn"), x, y, clip=1.0, noise=0.0, batch=5)
    assert torch.sqrt(sum((d**2).sum() for d in unclipped)).item() > 10 * norm


def test_nonprivate_step_is_plain_sgd_on_the_mean_loss() -> None:
    torch.manual_seed(0)
    model = create_model("cnn")
    reference = create_model("cnn")
    reference.load_state_dict(model.state_dict())
    x, y = _batch(n=8)
    delta = _step_delta("nonprivate", model, x, y, clip=1.0, noise=0.0, batch=8)
    loss = nn.functional.binary_cross_entropy_with_logits(reference(x), y)
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    for d, g in zip(delta, grads):
        torch.testing.assert_close(d, g, atol=1e-6, rtol=1e-5)


def test_noise_has_standard_deviation_sigma_c_over_batch() -> None:
    # An empty Poisson batch still gets noise: the update is N(0, (sigma C / B)^2) per coordinate.
    torch.manual_seed(0)
    model = create_model("cnn")
    x, y = _batch(n=0)
    sigma, clip, batch = 1.3, 0.7, 16
    delta = torch.cat(
        [
            d.flatten()
            for d in _step_delta("opacus", model, x, y, clip=clip, noise=sigma, batch=batch)
        ]
    )
    expected = sigma * clip / batch
    assert delta.numel() > 20_000
    assert abs(delta.std().item() / expected - 1) < 0.03
    assert abs(delta.mean().item()) < 4 * expected / math.sqrt(delta.numel())


def test_poisson_sampling_matches_its_distribution() -> None:
    n, q, draws = 2000, 0.05, 400
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(n)
    sizes = []
    for _ in range(draws):
        idx = poisson_indices(n, q, g)
        counts[idx] += 1
        sizes.append(len(idx))
        assert len(set(idx.tolist())) == len(idx)  # without replacement
    sizes = torch.tensor(sizes, dtype=torch.float64)
    # Batch size is Binomial(n, q): mean n q, variance n q (1 - q).
    assert abs(sizes.mean().item() - n * q) < 4 * math.sqrt(n * q * (1 - q) / draws)
    assert abs(sizes.var().item() / (n * q * (1 - q)) - 1) < 0.25
    # Every example is included at rate q (not a fixed-size shuffle).
    assert abs(counts.mean().item() / draws - q) < 0.002
    assert (sizes != sizes[0]).any()


def test_opacus_refuses_batchnorm_with_a_clear_error() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 26 * 26, 1)
    )
    with pytest.raises(ValueError, match="cannot be trained with backend 'opacus'.*BatchNorm"):
        create_backend(
            "opacus",
            model,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            expected_batch_size=4,
            lr=0.1,
            momentum=0.0,
            generator=torch.Generator(),
        )


@pytest.mark.parametrize("model_name", ["cnn", "resnet8"])
def test_torch_func_per_sample_gradients_equal_batch_of_one(model_name: str) -> None:
    from privkit.engine.per_sample import clip, per_sample_gradients, per_sample_norms

    torch.manual_seed(0)
    model = create_model(model_name, n_outputs=3)
    x, y = _batch(n=4, labels=3)
    grads = per_sample_gradients(model, x, y)
    for i in range(len(x)):
        model.zero_grad()
        per_sample_loss(model(x[i : i + 1]), y[i : i + 1]).sum().backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(grads[name][i], p.grad, atol=1e-6, rtol=1e-4)
    clipped = per_sample_norms(clip(grads, 1e-3))
    assert (clipped <= 1e-3).all() and (clipped > 0.99e-3).all()
