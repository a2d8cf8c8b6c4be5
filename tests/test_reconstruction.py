"""Tests for privkit.attacks.reconstruction and image_similarity against references that do
not come from the code under test: scikit-image's SSIM and PSNR, closed forms of PSNR and
SSIM, brute-force matching and ranking, gradients of batches of one clipped by hand, and the
Gaussian distribution of the noise."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import pytest
import torch
from scipy import stats
from torch import nn

from privkit import accounting
from privkit.attacks import image_similarity as sim
from privkit.attacks import reconstruction as rec
from privkit.engine import per_sample_loss
from privkit.mechanism import plan
from privkit.models import create_model
from privkit.plots import reconstruction_grid


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """These networks are tiny: one thread is several times faster on a busy 2-core CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(seed: int = 0) -> nn.Module:
    """A tanh network on 1x12x12 images; its first layer is fully connected."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(144, 32), nn.Tanh(), nn.Linear(32, 1))


def smooth_images(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 1, 12, 12) smooth blobs in [-1, 1], like tiny X-rays."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((n, 1, 4, 4), generator=g) * 2 - 1
    return nn.functional.interpolate(coarse, size=12, mode="bilinear", align_corners=True)


def test_inverting_gradients_recovers_a_single_image() -> None:
    model, x, y = tiny_model(), smooth_images(1), torch.ones(1, 1)
    update = rec.share_update(model, x, y)
    config = rec.AttackConfig(iterations=300, tv_weight=0.0)
    found = rec.reconstruct(
        model, update, image_shape=(1, 12, 12), labels=y, config=config, progress=False
    )
    start = torch.randn((1, 1, 12, 12), generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    assert sim.psnr(start, x)[0] < 12  # where the attack starts
    assert sim.psnr(found.images, x)[0] > 35
    assert found.matching_loss < 1e-4


def test_dlg_recovers_a_single_image_and_its_label() -> None:
    model, x, y = tiny_model(1), smooth_images(1, seed=1), torch.zeros(1, 1)
    update = rec.share_update(model, x, y)
    config = rec.AttackConfig(method="dlg", iterations=200, lr=1.0, labels="joint")
    found = rec.reconstruct(model, update, image_shape=(1, 12, 12), config=config, progress=False)
    assert sim.psnr(found.images, x)[0] > 35
    assert found.labels.tolist() == [[0.0]]


def test_noise_kills_the_attack_that_works_without_it() -> None:
    model, x, y = tiny_model(), smooth_images(1), torch.ones(1, 1)
    config = rec.AttackConfig(iterations=200, tv_weight=0.0)
    psnrs = []
    for sigma in (0.0, 1.0):
        g = torch.Generator().manual_seed(0)
        update = rec.share_update(
            model, x, y, max_grad_norm=0.1, noise_multiplier=sigma, generator=g
        )
        found = rec.reconstruct(
            model, update, image_shape=(1, 12, 12), labels=y, config=config, progress=False
        )
        psnrs.append(sim.psnr(found.images, x)[0])
    assert psnrs[0] > 30 > 15 > psnrs[1]


def test_clipped_sum_matches_batches_of_one_clipped_by_hand() -> None:
    model = create_model("cnn")
    x = torch.randn(3, 1, 28, 28)
    y = torch.tensor([[0.0], [1.0], [1.0]])
    update = rec.share_update(model, x, y, max_grad_norm=0.05)
    expected = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    for i in range(3):
        loss = per_sample_loss(model(x[i : i + 1]), y[i : i + 1]).sum()
        grads = torch.autograd.grad(loss, list(model.parameters()))
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        assert norm > 0.05  # clipping is exercised
        for (k, _), g in zip(model.named_parameters(), grads):
            expected[k] += g * 0.05 / norm
    for k in expected:
        torch.testing.assert_close(update.gradient[k], expected[k], rtol=1e-4, atol=1e-7)
    unclipped = rec.share_update(model, x, y)
    total = sum(unclipped.gradient[k].norm() ** 2 for k in expected).sqrt()
    assert total > 3 * 0.05  # without clipping the sum is much larger


def test_dp_noise_is_gaussian_with_std_sigma_times_c() -> None:
    model = create_model("cnn")  # 26,113 coordinates of noise
    x, y = torch.randn(2, 1, 28, 28), torch.ones(2, 1)
    sigma, c = 0.7, 2.0
    noiseless = rec.share_update(model, x, y, max_grad_norm=c)
    noisy = rec.share_update(
        model,
        x,
        y,
        max_grad_norm=c,
        noise_multiplier=sigma,
        generator=torch.Generator().manual_seed(3),
    )
    noise = torch.cat(
        [(noisy.gradient[k] - noiseless.gradient[k]).flatten() for k in noisy.gradient]
    )
    d = noise.numel()
    std = noise.double().std().item()
    assert abs(std / (sigma * c) - 1) < 4 / math.sqrt(2 * d)  # sd of a sample sd: sd / sqrt(2d)
    assert abs(noise.double().mean().item()) < 4 * sigma * c / math.sqrt(d)
    assert stats.kstest((noise / (sigma * c)).double().numpy(), "norm").pvalue > 1e-3
    again = rec.share_update(
        model,
        x,
        y,
        max_grad_norm=c,
        noise_multiplier=sigma,
        generator=torch.Generator().manual_seed(3),
    )
    torch.testing.assert_close(again.gradient, noisy.gradient, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:Optimal order:UserWarning")
def test_defenses_calibrate_noise_to_the_training_run() -> None:
    run = dict(delta=1e-5, sample_rate=256 / 4708, steps=180)
    settings = rec.defenses(max_grad_norm=1.0, epsilons=[8.0], noise_multipliers=[0.01], **run)
    assert [s.name for s in settings] == ["none", "clip C=1", "DP ε=8", "DP ε≈9.8e+05"]
    none, clip, dp, fixed = settings
    assert (none.max_grad_norm, none.noise_multiplier) == (math.inf, 0.0)
    assert (clip.max_grad_norm, clip.noise_multiplier) == (1.0, 0.0)
    spent = accounting.epsilon(noise_multiplier=dp.noise_multiplier, **run)
    assert 0.99 * 8 <= spent <= 8
    assert fixed.epsilon == accounting.epsilon(noise_multiplier=0.01, accountant="rdp", **run) > 1e5
    assert (dp.mechanism.accountant, fixed.mechanism.accountant) == ("prv", "rdp")  # the one used
    assert {s.mechanism.steps for s in settings[1:]} == {180}


@pytest.mark.parametrize("n_outputs", [1, 3])
@pytest.mark.parametrize("max_grad_norm", [math.inf, 0.1])
def test_idlg_recovers_labels_of_a_single_image(n_outputs: int, max_grad_norm: float) -> None:
    model = create_model("cnn", n_outputs=n_outputs)
    x = torch.randn(1, 1, 28, 28)
    for bits in itertools.product([0.0, 1.0], repeat=n_outputs):
        y = torch.tensor([bits])
        update = rec.share_update(model, x, y, max_grad_norm=max_grad_norm)
        assert rec.idlg_labels(model, update).tolist() == [list(bits)]


def test_ssim_matches_scikit_image() -> None:
    skimage_metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    x = torch.rand((3, 1, 28, 28), generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn((3, 1, 28, 28), generator=g)).clamp(-1, 1)
    ours = sim.ssim(y, x, data_range=2.0)
    for i in range(3):
        ref = skimage_metrics.structural_similarity(
            x[i, 0].double().numpy(),
            y[i, 0].double().numpy(),
            data_range=2.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert ours[i] == pytest.approx(ref, abs=1e-6)
        assert 0.1 < ours[i] < 0.9  # a case where the formula matters
        psnr_ref = skimage_metrics.peak_signal_noise_ratio(
            x[i, 0].double().numpy(), y[i, 0].double().numpy(), data_range=2.0
        )
        assert sim.psnr(y, x, data_range=2.0)[i] == pytest.approx(psnr_ref, abs=1e-9)


def test_psnr_and_ssim_closed_forms() -> None:
    x = torch.rand(2, 1, 12, 12) * 2 - 1
    assert sim.psnr(x + 0.2, x, data_range=2.0) == pytest.approx([10 * math.log10(4 / 0.04)] * 2)
    assert sim.psnr(x, x).tolist() == [math.inf, math.inf]
    assert sim.ssim(x, x) == pytest.approx([1.0, 1.0])
    a, b, r = 0.3, -0.5, 2.0  # constant images: only the luminance term remains
    c1 = (0.01 * r) ** 2
    expected = (2 * a * b + c1) / (a**2 + b**2 + c1)
    full = lambda v: torch.full((1, 1, 12, 12), v, dtype=torch.float64)  # noqa: E731
    assert sim.ssim(full(a), full(b), data_range=r)[0] == pytest.approx(expected, rel=1e-9)
    y = torch.rand(2, 1, 12, 12)
    assert sim.ssim(x, y) == pytest.approx(sim.ssim(y, x))


def test_match_finds_the_best_assignment() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        truth = torch.rand((4, 1, 4, 4), generator=g)
        recs = truth[torch.randperm(4, generator=g)] + 0.6 * torch.rand((4, 1, 4, 4), generator=g)
        order = sim.match(recs, truth)

        def cost(p, recs=recs, truth=truth) -> float:
            return sum(((recs[j] - truth[i]) ** 2).sum().item() for i, j in enumerate(p))

        best = min(itertools.permutations(range(4)), key=cost)
        assert cost(order) == pytest.approx(cost(best))
        assert sorted(order.tolist()) == [0, 1, 2, 3]


def test_identification_rank_against_sorting() -> None:
    g = torch.Generator().manual_seed(0)
    pool = torch.rand((30, 1, 4, 4), generator=g)
    truth = [3, 17, 17, 29]
    images = pool[truth] + 0.6 * torch.randn((4, 1, 4, 4), generator=g)
    ranks = sim.identification_rank(images, pool, truth)
    for image, t, rank in zip(images, truth, ranks):
        order = sorted(range(30), key=lambda j: ((image - pool[j]) ** 2).sum().item())
        assert rank == order.index(t) + 1
    assert sorted(set(ranks.tolist())) != [1]  # noisy enough that some are not re-identified
    assert sim.identification_rank(pool[truth], pool, truth).tolist() == [1, 1, 1, 1]
    with pytest.raises(ValueError, match=r"truth in \[0, 30\)"):
        sim.identification_rank(images, pool, [0, 1, 2, 30])


def test_attack_is_seeded_and_shows_progress(capsys: pytest.CaptureFixture[str]) -> None:
    model, x, y = tiny_model(), smooth_images(2), torch.tensor([[1.0], [0.0]])
    update = rec.share_update(model, x, y)
    config = rec.AttackConfig(iterations=20, restarts=2)
    runs = [
        rec.reconstruct(
            model, update, image_shape=(1, 12, 12), labels=y, config=config, seed=s, progress=p
        )
        for s, p in [(1, True), (1, False), (2, False)]
    ]
    assert "inverting B=2" in capsys.readouterr().err
    torch.testing.assert_close(runs[0].images, runs[1].images, rtol=0, atol=0)
    assert not torch.equal(runs[0].images, runs[2].images)
    rec.reconstruct(model, update, image_shape=(1, 12, 12), labels=y, config=config, progress=False)
    assert capsys.readouterr().err == ""


def test_attack_defenses_table_and_figure() -> None:
    model, x, y = tiny_model(), smooth_images(1), torch.tensor([[1.0]])
    settings = [
        rec.Defense("none"),
        rec.Defense(
            "DP",
            plan(noise_multiplier=1.0, max_grad_norm=0.1, sample_rate=0.01, steps=100, delta=1e-5),
        ),
    ]
    config = rec.AttackConfig(iterations=150, tv_weight=0.0)
    pool = torch.cat([smooth_images(20, seed=5), x])  # x is candidate 20
    result = rec.attack_defenses(
        model, x, y, settings, config=config, candidates=pool, truth=[20], progress=False
    )
    table = rec.summary(result.table).set_index("defense")
    assert table.loc["none", "rank"] == 1
    assert table.loc["none", "psnr"] > 20 > table.loc["DP", "psnr"]
    assert table.loc["none", "update_cosine"] == pytest.approx(1.0)
    assert table.loc["DP", "update_cosine"] < 0.5
    assert set(result.table.metric) == {
        "psnr",
        "ssim",
        "label_correct",
        "rank",
        "update_cosine",
        "matching_loss",
    }
    fig = reconstruction_grid([result, result], bounds=(-1.0, 1.0))
    assert len([ax for ax in fig.axes if ax.images]) == 2 * 3  # 2 blocks of 3 rows
    assert "dB" in fig.axes[1].get_ylabel()


def test_bad_inputs_raise_clear_errors() -> None:
    model, x, y = tiny_model(), smooth_images(2), torch.ones(2, 1)
    with pytest.raises(ValueError, match="method='adam'"):
        rec.AttackConfig(method="adam")
    with pytest.raises(ValueError, match="iterations=0"):
        rec.AttackConfig(iterations=0)
    with pytest.raises(ValueError, match="labels='guess'"):
        rec.AttackConfig(labels="guess")
    with pytest.raises(ValueError, match=r"bounds=\(1.0, -1.0\)"):
        rec.AttackConfig(bounds=(1.0, -1.0))
    with pytest.raises(ValueError, match="finite max_grad_norm"):
        rec.share_update(model, x, y, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="noise_multiplier=-1"):
        rec.share_update(model, x, y, max_grad_norm=1.0, noise_multiplier=-1.0)
    with pytest.raises(ValueError, match=r"labels of shape \(B, L\) with B = 2"):
        rec.share_update(model, x, torch.ones(3, 1))
    with pytest.raises(ValueError, match=r"images of shape \(B, C, H, W\)"):
        rec.share_update(model, x[0], y)
    update = rec.share_update(model, x, y)
    with pytest.raises(ValueError, match="batch_size=1 for iDLG"):
        rec.idlg_labels(model, update)
    with pytest.raises(ValueError, match="config.labels='known'"):
        rec.reconstruct(model, update, image_shape=(1, 12, 12), progress=False)
    with pytest.raises(ValueError, match="image_shape"):
        rec.reconstruct(model, update, image_shape=(12, 12), labels=y, progress=False)
    with pytest.raises(ValueError, match="same shape"):
        sim.psnr(x, x[:1])
    with pytest.raises(ValueError, match="window_size=11"):
        sim.ssim(x[..., :10, :], x[..., :10, :])
    with pytest.raises(ValueError, match="noise_multipliers=0"):
        rec.defenses(
            max_grad_norm=1.0,
            epsilons=[],
            noise_multipliers=[0.0],
            delta=1e-5,
            sample_rate=0.01,
            steps=10,
        )
    with pytest.raises(ValueError, match="distinct names"):
        rec.attack_defenses(model, x, y, [rec.Defense("a"), rec.Defense("a")], progress=False)
