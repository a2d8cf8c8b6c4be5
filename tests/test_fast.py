"""The `fast` backend against references: Opacus's step, plain SGD, unpadded batches, a model
trained alone, and the statistics of padded Poisson sampling."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from privkit import data
from privkit.engine import create_backend
from privkit.engine.fast import FastStack, max_batch_size, padded_poisson
from privkit.models import create_model
from privkit.train import TrainConfig, train, train_many

QUICK = dict(epochs=2, batch_size=32, lr=0.5, device="cpu", delta=1e-3)


def _stack(
    models, *, sigma=0.0, clip=math.inf, batch=4.0, max_batch=8, momentum=0.0, compile=False
):
    return FastStack(
        models,
        noise_multipliers=[sigma] * len(models),
        max_grad_norms=[clip] * len(models),
        expected_batch_sizes=[batch] * len(models),
        lr=1.0,
        momentum=momentum,
        generators=[torch.Generator().manual_seed(i) for i in range(len(models))],
        max_batch=max_batch,
        compile=compile,
    )


def _delta(stack: FastStack, before: dict) -> dict:
    return {k: before[k] - stack.params[k] for k in before}


def _batch(n: int, labels: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(
        0, 2, (n, labels), generator=g
    ).float()


def test_fast_step_equals_opacus_step_on_the_same_batch() -> None:
    torch.manual_seed(0)
    model = create_model("cnn", n_outputs=2)
    twin = create_model("cnn", n_outputs=2)
    twin.load_state_dict(model.state_dict())
    x, y = _batch(6, labels=2)
    stack = _stack([model], clip=0.05, batch=4)
    before = {k: v.clone() for k, v in stack.params.items()}
    stack.step(x[None], y[None], torch.ones(1, 6))
    opacus = create_backend(
        "opacus",
        twin,
        noise_multiplier=0.0,
        max_grad_norm=0.05,
        expected_batch_size=4,
        lr=1.0,
        momentum=0.0,
        generator=torch.Generator(),
    )
    reference = {k: p.detach().clone() for k, p in twin.named_parameters()}
    opacus.step(x, y)
    for name, p in twin.named_parameters():
        torch.testing.assert_close(
            _delta(stack, before)[name][0], reference[name] - p.detach(), atol=1e-6, rtol=1e-3
        )


def test_without_noise_and_clipping_a_step_is_plain_sgd() -> None:
    torch.manual_seed(0)
    model = create_model("cnn")
    x, y = _batch(8)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
    grads = dict(
        zip(
            [k for k, _ in model.named_parameters()],
            torch.autograd.grad(loss, list(model.parameters())),
        )
    )
    stack = _stack([model], batch=8)
    before = {k: v.clone() for k, v in stack.params.items()}
    stack.step(x[None], y[None], torch.ones(1, 8))
    for name, g in grads.items():
        torch.testing.assert_close(_delta(stack, before)[name][0], g, atol=1e-6, rtol=1e-4)


def test_padding_and_chunking_do_not_change_the_update() -> None:
    torch.manual_seed(0)
    model = create_model("cnn")
    x, y = _batch(5)
    junk_x, junk_y = _batch(11, seed=1)
    padded_x, padded_y = torch.cat([x, junk_x]), torch.cat([y, junk_y])  # 16 = 2 chunks of 8
    weights = torch.cat([torch.ones(5), torch.zeros(11)])
    updates = []
    for images, labels, w, max_batch in [
        (x, y, torch.ones(5), 5),
        (padded_x, padded_y, weights, 8),
        (padded_x, padded_y, weights, 16),
    ]:
        stack = _stack([create_model("cnn")], clip=0.1, max_batch=max_batch)
        stack.params = {k: v.detach().clone()[None] for k, v in model.named_parameters()}
        before = {k: v.clone() for k, v in stack.params.items()}
        stack.step(images[None], labels[None], w[None])
        updates.append(_delta(stack, before))
    for other in updates[1:]:
        for name in updates[0]:
            torch.testing.assert_close(other[name], updates[0][name], atol=1e-7, rtol=1e-5)


def test_noise_has_standard_deviation_sigma_c_over_batch_per_model() -> None:
    torch.manual_seed(0)
    models = [create_model("cnn") for _ in range(2)]
    stack = FastStack(
        models,
        noise_multipliers=[1.3, 0.0],
        max_grad_norms=[0.7, math.inf],
        expected_batch_sizes=[16, 16],
        lr=1.0,
        momentum=0.0,
        generators=[torch.Generator().manual_seed(i) for i in range(2)],
        max_batch=4,
        compile=False,
    )
    before = {k: v.clone() for k, v in stack.params.items()}
    x, y = _batch(4)
    stack.step(x.expand(2, *x.shape), y.expand(2, *y.shape), torch.zeros(2, 4))  # empty batches
    delta = torch.cat([d.flatten(1) for d in _delta(stack, before).values()], dim=1)  # (2, P)
    assert abs(delta[0].std().item() / (1.3 * 0.7 / 16) - 1) < 0.03
    assert torch.count_nonzero(delta[1]) == 0  # non-private member: no noise at all


def test_ema_evaluates_the_moving_average_of_the_iterates() -> None:
    torch.manual_seed(0)
    model = create_model("cnn")
    stack = FastStack(
        [model],
        noise_multipliers=[1.0],
        max_grad_norms=[0.5],
        expected_batch_sizes=[4.0],
        lr=0.1,
        momentum=0.9,
        generators=[torch.Generator().manual_seed(0)],
        max_batch=8,
        ema=0.8,
        compile=False,
    )
    iterates = []
    for seed in range(5):
        x, y = _batch(4, seed=seed)
        stack.step(x[None], y[None], torch.ones(1, 4))
        iterates.append({k: v[0].clone() for k, v in stack.params.items()})
    average = dict(iterates[0])
    for t, params in enumerate(iterates[1:], start=1):  # warm-up: min(decay, (1 + t) / (10 + t))
        d = min(0.8, (1 + t) / (10 + t))
        average = {k: d * average[k] + (1 - d) * params[k] for k in average}
    last = iterates[-1]
    stack.unstacked()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), average[name])
        assert not torch.allclose(p.detach(), last[name])  # not simply the last iterate


def test_ema_in_the_opacus_path_averages_its_iterates(
    synthetic_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import privkit.train

    dataset = data.load("pneumoniamnist", root=synthetic_root)
    iterates: list[dict[str, torch.Tensor]] = []

    def recording(*args, **kwargs):  # the real backend, remembering each iterate
        backend = create_backend(*args, **kwargs)
        step = backend.step

        def step_and_record(images, labels):
            loss = step(images, labels)
            iterates.append({k: p.detach().clone() for k, p in backend.model.named_parameters()})
            return loss

        backend.step = step_and_record
        return backend

    monkeypatch.setattr(privkit.train, "create_backend", recording)
    config = TrainConfig(backend="opacus", epsilon=4.0, ema=0.7, **{**QUICK, "epochs": 1})
    trained = train(config, dataset=dataset, progress=False).model
    assert len(iterates) > 2
    average = dict(iterates[0])
    for t, params in enumerate(iterates[1:], start=1):
        d = min(0.7, (1 + t) / (10 + t))
        average = {k: d * average[k] + (1 - d) * params[k] for k in average}
    for name, p in trained.named_parameters():
        torch.testing.assert_close(p.detach(), average[name.removeprefix("_module.")])


def test_model_trained_alone_equals_the_same_model_in_a_stack(synthetic_root: Path) -> None:
    dataset = data.load("pneumoniamnist", root=synthetic_root)
    # One epoch: batched and single kernels round differently (~1e-8), and after enough steps a
    # max-pooling near-tie can route a gradient differently, so longer runs drift apart by ~1e-3.
    one_epoch = {**QUICK, "epochs": 1}
    configs = [
        TrainConfig(epsilon=e, seed=s, randomness="seeded", **one_epoch)
        for e, s in [(1.0, 3), (4.0, 5), (math.inf, 5)]
    ]
    together = train_many(configs, dataset=dataset, progress=False)
    for config, stacked in zip(configs, together):
        alone = train(config, dataset=dataset, progress=False)
        assert alone.mechanism == stacked.mechanism
        for a, b in zip(alone.model.parameters(), stacked.model.parameters()):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        assert alone.metrics["test"]["auc"] == pytest.approx(
            stacked.metrics["test"]["auc"], abs=1e-3
        )
    assert [r.backend for r in together] == ["fast", "fast", "nonprivate"]


def test_members_restrict_each_models_data_and_its_sample_rate(synthetic_root: Path) -> None:
    dataset = data.load("pneumoniamnist", root=synthetic_root)
    n = len(dataset.train)
    members = torch.zeros(2, n, dtype=torch.bool)
    members[0, : n // 2] = True  # the two halves, as two shadow models would
    members[1, n // 2 :] = True
    results = train_many(
        [TrainConfig(epsilon=2.0, seed=s, **QUICK) for s in (0, 1)],
        dataset=dataset,
        members=members,
        progress=False,
    )
    for r in results:
        assert r.mechanism.sample_rate == pytest.approx(32 / (n // 2))
        assert r.mechanism.steps == QUICK["epochs"] * round((n // 2) / 32)
        assert r.mechanism.epsilon <= 2.0


def test_a_stack_refuses_models_that_would_run_different_step_counts(synthetic_root: Path) -> None:
    dataset = data.load("pneumoniamnist", root=synthetic_root)
    members = torch.ones(2, len(dataset.train), dtype=torch.bool)
    members[0, 64:] = False  # 64 examples: 2 steps per epoch instead of 8
    with pytest.raises(ValueError, match=r"same number of steps, got \[4, 16\]"):
        train_many(
            [TrainConfig(epsilon=2.0, seed=s, **QUICK) for s in (0, 1)],
            dataset=dataset,
            members=members,
            progress=False,
        )


def test_padded_poisson_is_exact_poisson_of_members_without_truncation() -> None:
    n, draws, max_batch = 600, 300, 8  # max_batch far below the mean batch: always chunks
    members = torch.ones(2, n, dtype=torch.bool)
    members[1, 300:] = False
    rates = torch.tensor([0.05, 0.1], dtype=torch.float64)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    sizes, seen = [[], []], torch.zeros(2, n)
    for _ in range(draws):
        idx, w = padded_poisson(members * rates[:, None], gens, max_batch)
        assert idx.shape == w.shape and idx.shape[1] % max_batch == 0
        for k in range(2):
            chosen = idx[k][w[k] == 1]
            assert len(set(chosen.tolist())) == len(chosen)
            seen[k, chosen] += 1
            sizes[k].append(len(chosen))
    assert seen[1, 300:].sum() == 0  # never a non-member
    for k, m in enumerate((600, 300)):
        mean = torch.tensor(sizes[k], dtype=torch.float64).mean().item()
        assert abs(mean - m * rates[k].item()) < 4 * math.sqrt(m * rates[k].item() / draws)
    # Same generator, same draws: the Poisson sample of model 0 equals poisson_indices'.
    from privkit.engine.sampling import poisson_indices

    idx, w = padded_poisson(
        members[:1] * torch.tensor(0.05, dtype=torch.float64),
        [torch.Generator().manual_seed(7)],
        max_batch,
    )
    assert (
        sorted(idx[0][w[0] == 1].tolist())
        == poisson_indices(n, 0.05, torch.Generator().manual_seed(7)).tolist()
    )


def test_padded_poisson_samples_each_example_at_its_own_rate() -> None:
    n, draws = 400, 2000  # individualised privacy: a strict half sampled 4x less often
    rates = torch.where(torch.arange(n) < n // 2, 0.02, 0.08)[None]
    counts = torch.zeros(n)
    gen = [torch.Generator().manual_seed(3)]
    for _ in range(draws):
        idx, w = padded_poisson(rates, gen, None)
        counts[idx[0][w[0] == 1]] += 1
    for part, q in ((slice(0, n // 2), 0.02), (slice(n // 2, n), 0.08)):
        freq = counts[part].sum().item() / (draws * n // 2)
        assert abs(freq - q) < 4 * math.sqrt(q * (1 - q) / (draws * n // 2)), (freq, q)


def test_max_batch_leaves_a_second_chunk_rare() -> None:
    from scipy.stats import binom

    b = max_batch_size(4708, 256 / 4708)
    assert binom.sf(b, 4708, 256 / 4708) < 1e-4 < binom.sf(b - 10, 4708, 256 / 4708)


def test_backends_agree_statistically(synthetic_root: Path) -> None:
    dataset = data.load("pneumoniamnist", root=synthetic_root)
    aucs = {}
    for backend in ("fast", "opacus"):
        runs = [
            train(
                TrainConfig(epsilon=0.5, seed=s, backend=backend, **{**QUICK, "epochs": 1}),
                dataset=dataset,
                progress=False,
            )
            for s in range(4)
        ]
        aucs[backend] = torch.tensor([r.metrics["test"]["auc"] for r in runs])
    assert abs(aucs["fast"].mean() - aucs["opacus"].mean()) < 0.05 + 2 * aucs["opacus"].std()


@pytest.mark.gpu
def test_compiled_cuda_stack_matches_eager(synthetic_root: Path) -> None:
    dataset = data.load("pneumoniamnist", root=synthetic_root, device="cuda")
    configs = [TrainConfig(epsilon=2.0, seed=s, **{**QUICK, "device": "cuda"}) for s in range(3)]
    compiled = train_many(configs, dataset=dataset, progress=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRIVKIT_COMPILE", "0")
        eager = train_many(configs, dataset=dataset, progress=False)
    for a, b in zip(compiled, eager):
        for p, q in zip(a.model.parameters(), b.model.parameters()):
            torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-3)
