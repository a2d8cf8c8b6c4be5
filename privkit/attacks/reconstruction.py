"""Reconstructing training images from one shared gradient: the federated-learning threat.

A client (or one DP-SGD step) releases the summed gradient of a small batch of X-rays. An
honest-but-curious server that knows the model optimises dummy images until their gradient
matches the released one:

* **inverting gradients** (Geiping, Bauermeister, Dröge & Moeller 2020, "Inverting Gradients -
  How easy is it to break privacy in federated learning?", https://arxiv.org/abs/2003.14053):
  cosine distance between gradients plus a total-variation prior, Adam on signed gradients,
  dummies kept in the images' value range;
* **DLG** (Zhu, Liu & Han 2019, "Deep Leakage from Gradients", https://arxiv.org/abs/1906.08935):
  squared L2 distance, L-BFGS, labels optimised jointly with the images;
* **iDLG** labels (Zhao, Mopuri & Bilen 2020, https://arxiv.org/abs/2001.02610): for a single
  image the sign of the last bias's gradient gives the label. privkit's models end in one
  logit per label under binary cross-entropy, where ``dL/db_l = (sigmoid(z_l) - y_l) / L``
  is negative exactly when ``y_l = 1``; clipping scales it by a positive factor.

The defences are DP-SGD's (Abadi et al. 2016): each example's gradient clipped to norm ``C``
and ``N(0, sigma^2 C^2 I)`` added to their sum. The attacker is adaptive: it knows ``C`` (DP-SGD
publishes it) and clips its dummies' gradients the same way; noise it cannot undo.

Reconstructions are scored against the true images with PSNR, SSIM and re-identification
rank (:mod:`privkit.attacks.image_similarity`), after matching each true image to its best
reconstruction (a batch's gradient does not reveal the order of its images).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from privkit import _validate, mechanism
from privkit.attacks.image_similarity import identification_rank, match, psnr, ssim
from privkit.engine.gaussian import add_noise
from privkit.engine.per_sample import clipped_sum, per_sample_gradients
from privkit.mechanism import Mechanism
from privkit.randomness import torch_generator

Grads = dict[str, Tensor]  # parameter name -> tensor of the parameter's shape
METHODS = ("inverting", "dlg")
LABEL_SOURCES = ("known", "idlg", "joint")


@dataclass(frozen=True)
class SharedUpdate:
    """What is released for one batch: ``sum_i clip(g_i, C) + N(0, sigma^2 C^2 I)``.

    ``max_grad_norm = inf`` means no clipping and ``noise_multiplier = 0`` no noise.
    """

    gradient: Grads
    batch_size: int
    max_grad_norm: float = math.inf
    noise_multiplier: float = 0.0


@dataclass(frozen=True)
class Defense:
    """One setting of the experiment: a name and the mechanism of the assumed training run,
    one of whose steps is the released update.

    The mechanism's ``max_grad_norm`` clips each example's gradient and its noise multiplier
    scales the noise; its ``epsilon`` is what the run spends (inf without noise). ``None``: no
    defence, neither clipping nor noise.
    """

    name: str
    mechanism: Mechanism | None = None

    @property
    def max_grad_norm(self) -> float:
        return math.inf if self.mechanism is None else self.mechanism.max_grad_norm

    @property
    def noise_multiplier(self) -> float:
        return 0.0 if self.mechanism is None else self.mechanism.noise_multiplier

    @property
    def epsilon(self) -> float:
        return math.inf if self.mechanism is None else self.mechanism.epsilon


@dataclass(frozen=True)
class AttackConfig:
    """How the attacker optimises; the defaults follow Geiping et al. 2020 at a smaller budget.

    Attributes:
        method: ``"inverting"`` (cosine + total variation, Adam) or ``"dlg"`` (L2, L-BFGS).
        iterations: optimiser steps (``"inverting"``) or gradient evaluations (``"dlg"``).
        lr: step size; Geiping et al. use 0.1 with Adam, Zhu et al. 1 with L-BFGS.
        tv_weight: weight of the total-variation prior (``"inverting"`` only).
        signed: Adam on the sign of the gradient (Geiping et al.'s choice).
        restarts: independent starts; the one whose gradient matches best is kept.
        labels: ``"known"`` (given to the attacker, as Geiping et al. assume), ``"idlg"``
            (recovered analytically; batches of one) or ``"joint"`` (optimised with the images).
        bounds: the images' value range (privkit scales X-rays to [-1, 1]).
    """

    method: str = "inverting"
    iterations: int = 1000
    lr: float = 0.1
    tv_weight: float = 0.05
    signed: bool = True
    restarts: int = 1
    labels: str = "known"
    bounds: tuple[float, float] = (-1.0, 1.0)

    def __post_init__(self) -> None:
        _validate.one_of(METHODS, method=self.method)
        _validate.positive_int(iterations=self.iterations)
        _validate.in_range(0, math.inf, low_inclusive=False, high_inclusive=False, lr=self.lr)
        _validate.in_range(0, math.inf, high_inclusive=False, tv_weight=self.tv_weight)
        _validate.positive_int(restarts=self.restarts)
        _validate.one_of(LABEL_SOURCES, labels=self.labels)
        low, high = self.bounds
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(
                f"Expected bounds={self.bounds!r} to be finite (low, high), low < high."
            )


@dataclass(frozen=True)
class Reconstruction:
    """The attacker's best images (B, C, H, W) and labels (B, L), and how well their gradient
    matched the released one (the attack's loss, lower is better)."""

    images: Tensor
    labels: Tensor
    matching_loss: float


def _aggregate(grads: Grads, max_grad_norm: float) -> Grads:
    """Sum of per-example gradients, each clipped to ``max_grad_norm`` when it is finite."""
    if math.isinf(max_grad_norm):  # clipped_sum's inf / norm has no usable derivative
        return {k: g.sum(0) for k, g in grads.items()}
    first = next(iter(grads.values()))
    return clipped_sum(grads, max_grad_norm, torch.ones(first.shape[0], device=first.device))


def _check_batch(images: Tensor, labels: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[0] < 1:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"Expected images of shape (B, C, H, W) with B >= 1, got {shape}.")
    if not isinstance(labels, Tensor) or labels.dim() != 2 or labels.shape[0] != images.shape[0]:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(
            f"Expected labels of shape (B, L) with B = {images.shape[0]} (as images), got {shape}."
        )


def share_update(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    max_grad_norm: float = math.inf,
    noise_multiplier: float = 0.0,
    generator: torch.Generator | None = None,
) -> SharedUpdate:
    """The update a client releases for one batch, undefended, clipped, or clipped and noised.

    Per-example gradients and clipping come from :mod:`privkit.engine.per_sample`, the code
    DP-SGD trains with; the noise is ``N(0, (noise_multiplier * max_grad_norm)^2)`` per
    coordinate, :func:`privkit.engine.gaussian.add_noise` drawing it from ``generator``.

    Args:
        model: the shared model, at the parameters the client differentiates at.
        images: (B, C, H, W) the client's batch. labels: (B, L) its 0/1 labels.
        max_grad_norm: clipping norm C > 0; ``inf`` clips nothing.
        noise_multiplier: sigma >= 0; noise needs a finite ``max_grad_norm``.
        generator: random source of the noise; by default one seeded by the OS.

    Raises:
        ValueError: badly shaped inputs, or a parameter out of range (named in the message).

    >>> from privkit.models import create_model
    >>> up = share_update(create_model("cnn"), torch.zeros(2, 1, 28, 28), torch.ones(2, 1),
    ...                   max_grad_norm=1.0)
    >>> up.batch_size, round(sum(g.norm() ** 2 for g in up.gradient.values()).sqrt().item(), 3) <= 2
    (2, True)
    """
    _check_batch(images, labels)
    _validate.in_range(0, math.inf, low_inclusive=False, max_grad_norm=max_grad_norm)
    _validate.in_range(0, math.inf, high_inclusive=False, noise_multiplier=noise_multiplier)
    if noise_multiplier > 0 and math.isinf(max_grad_norm):
        raise ValueError(
            f"Expected a finite max_grad_norm with noise_multiplier={noise_multiplier!r}: "
            "DP noise is scaled to the clipping norm."
        )
    summed = _aggregate(per_sample_gradients(model, images, labels), max_grad_norm)
    if noise_multiplier > 0:
        if generator is None:
            generator = torch_generator(randomness="secure", identity={}, device=images.device)
        summed = add_noise(summed, std=noise_multiplier * max_grad_norm, generator=generator)
    return SharedUpdate(
        gradient={k: g.detach() for k, g in summed.items()},
        batch_size=images.shape[0],
        max_grad_norm=float(max_grad_norm),
        noise_multiplier=float(noise_multiplier),
    )


def idlg_labels(model: nn.Module, update: SharedUpdate) -> Tensor:
    """Labels (1, L) of a single image from the sign of the last bias's gradient (iDLG).

    Under binary cross-entropy ``dL/db_l = (sigmoid(z_l) - y_l) / L``, negative iff
    ``y_l = 1`` (Zhao et al. 2020's argument, for privkit's one-logit-per-label heads).

    Raises:
        ValueError: the update holds more than one image, or the model's last parameter is
            not a bias vector.
    """
    if update.batch_size != 1:
        raise ValueError(
            f"Expected batch_size=1 for iDLG label recovery, got batch_size={update.batch_size}; "
            "use labels='known' or 'joint' for larger batches."
        )
    name, last = list(model.named_parameters())[-1]
    if last.dim() != 1 or name not in update.gradient:
        raise ValueError(
            f"Expected the model's last parameter to be the output bias, got {name!r} of shape "
            f"{tuple(last.shape)}: iDLG reads the labels from that bias's gradient."
        )
    return (update.gradient[name] < 0).to(last.dtype).unsqueeze(0)


def total_variation(images: Tensor) -> Tensor:
    """Mean absolute difference of neighbouring pixels (the prior of Geiping et al. 2020)."""
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    return dx + dy


def _flat(grads: Grads) -> Tensor:
    return torch.cat([g.reshape(-1) for g in grads.values()])


def _matching_loss(method: str, dummy: Tensor, target: Tensor) -> Tensor:
    if method == "inverting":  # 1 - cosine similarity (Geiping et al. 2020, eq. 4)
        return 1 - nn.functional.cosine_similarity(dummy, target, dim=0, eps=1e-12)
    return (dummy - target).pow(2).sum()  # ||grad' - grad||^2 (Zhu et al. 2019, eq. 2)


def reconstruct(
    model: nn.Module,
    update: SharedUpdate,
    *,
    image_shape: tuple[int, int, int],
    labels: Tensor | None = None,
    config: AttackConfig = AttackConfig(),
    seed: int = 0,
    progress: bool = True,
) -> Reconstruction:
    """Optimise dummy images until their (clipped, summed) gradient matches ``update``.

    Args:
        model: the model the update was computed on (parameters are not changed).
        update: the released update; its clipping norm is applied to the dummies too.
        image_shape: (C, H, W) of one image.
        labels: (B, L) true labels, used only when ``config.labels == "known"``.
        config: the attack's method and settings.
        seed: seeds the dummies' initialisation; the same seed gives the same result.
        progress: show a tqdm bar over the optimisation steps.

    Returns:
        The restart whose gradient matched best, images clamped to ``config.bounds``.

    Raises:
        ValueError: inconsistent shapes, missing labels, or iDLG on more than one image.
    """
    if len(image_shape) != 3 or not all(isinstance(s, int) and s > 0 for s in image_shape):
        raise ValueError(f"Expected image_shape=(C, H, W) of positive ints, got {image_shape!r}.")
    batch = update.batch_size
    if config.labels == "known":
        if labels is None:
            raise ValueError("Expected labels (B, L) with config.labels='known'.")
        _check_batch(torch.empty(batch, *image_shape), labels)
        fixed_labels: Tensor | None = labels.detach().to(next(model.parameters()).device)
    elif config.labels == "idlg":
        fixed_labels = idlg_labels(model, update)
    else:
        fixed_labels = None
    device = next(model.parameters()).device
    n_labels = list(model.parameters())[-1].shape[0]
    target = _flat(update.gradient).to(device)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    low, high = config.bounds
    best: Reconstruction | None = None
    bar = tqdm(
        total=config.restarts * config.iterations,
        desc=f"{config.method} B={batch}",
        disable=not progress,
        leave=False,
    )
    for _ in range(config.restarts):
        x = torch.randn((batch, *image_shape), generator=generator).clamp(low, high).to(device)
        x.requires_grad_(True)
        label_logits = torch.randn((batch, n_labels), generator=generator).to(device)
        label_logits.requires_grad_(fixed_labels is None)

        def current_labels(label_logits: Tensor = label_logits) -> Tensor:
            return fixed_labels if fixed_labels is not None else torch.sigmoid(label_logits)

        def objective(x: Tensor = x) -> tuple[Tensor, Tensor]:
            grads = _aggregate(
                per_sample_gradients(model, x, current_labels()), update.max_grad_norm
            )
            match = _matching_loss(config.method, _flat(grads), target)
            prior = config.tv_weight * total_variation(x) if config.method == "inverting" else 0
            return match + prior, match

        variables = [x] + ([label_logits] if fixed_labels is None else [])
        if config.method == "inverting":
            match = _adam(objective, variables, x, config, bar)
        else:
            match = _lbfgs(objective, variables, config, bar)
        with torch.no_grad():
            images = x.detach().clamp(low, high)
            found = (current_labels().detach() > 0.5).to(images.dtype)
        if best is None or not match >= best.matching_loss:  # a NaN loss never wins
            best = Reconstruction(images=images, labels=found, matching_loss=match)
    bar.close()
    assert best is not None
    return best


def _adam(objective, variables: list[Tensor], x: Tensor, config: AttackConfig, bar: tqdm) -> float:
    """Geiping et al.'s loop: Adam, signed gradients, step decay at 3/8, 5/8, 7/8, box clamp."""
    optimizer = torch.optim.Adam(variables, lr=config.lr)
    milestones = [int(config.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    low, high = config.bounds
    for _ in range(config.iterations):
        optimizer.zero_grad()
        loss, _ = objective()
        loss.backward()
        if config.signed:
            for v in variables:
                v.grad.sign_()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            x.clamp_(low, high)
        bar.update()
    with torch.no_grad():
        x.clamp_(low, high)
    return float(objective()[1].detach())


def _lbfgs(objective, variables: list[Tensor], config: AttackConfig, bar: tqdm) -> float:
    """Zhu et al.'s loop: L-BFGS on the images (and labels); a strong-Wolfe line search keeps
    it from diverging, which plain DLG is prone to."""
    optimizer = torch.optim.LBFGS(
        variables,
        lr=config.lr,
        max_iter=config.iterations,
        max_eval=config.iterations,
        history_size=100,
        line_search_fn="strong_wolfe",
        tolerance_grad=0,
        tolerance_change=0,
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss, _ = objective()
        loss.backward()
        bar.update()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        variables[0].clamp_(*config.bounds)  # report images in range, as the attacker knows it
    return float(objective()[1].detach())


def defenses(
    *,
    max_grad_norm: float,
    epsilons: Sequence[float],
    noise_multipliers: Sequence[float] = (),
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "prv",
) -> list[Defense]:
    """The experiment's settings: no defence, clipping only, DP at each epsilon, fixed sigmas.

    Each is the mechanism (:func:`privkit.mechanism.plan`) of a training run of ``steps``
    Poisson-sampled steps at ``sample_rate``, clipped to ``max_grad_norm``: the released update
    is one of that run's steps. An ``epsilon`` gets the noise calibrated to it and is named by
    it (``"DP ε=8"``); a fixed ``noise_multiplier`` gets the epsilon the run would spend with
    it (``accountant``'s, or RDP's where the PRV cannot certify so weak a guarantee) and is
    named by that (``"DP ε≈9.8e+05"``).
    """
    run = dict(
        sample_rate=sample_rate,
        steps=steps,
        delta=delta,
        max_grad_norm=max_grad_norm,
        accountant=accountant,
    )
    settings = [
        Defense("none"),
        Defense(f"clip C={max_grad_norm:g}", mechanism.plan(noise_multiplier=0.0, **run)),
    ]
    settings += [Defense(f"DP ε={eps:g}", mechanism.plan(epsilon=eps, **run)) for eps in epsilons]
    for sigma in noise_multipliers:
        _validate.in_range(
            0, math.inf, low_inclusive=False, high_inclusive=False, noise_multipliers=sigma
        )
        fixed = mechanism.plan(noise_multiplier=sigma, **run)
        settings.append(Defense(f"DP ε≈{fixed.epsilon:.2g}", fixed))
    return settings


@dataclass(frozen=True)
class AttackResult:
    """Per-defence reconstructions (matched to the true images' order) and a tidy table.

    ``table`` has one row per (defense, image, metric) with columns ``batch_size, defense,
    max_grad_norm, noise_multiplier, epsilon, method, labels, seed, image, metric, value``;
    metrics ``psnr`` (dB), ``ssim``, ``label_correct`` (0/1), ``rank`` (if candidates were
    given: :func:`identification_rank`) and, per batch (``image`` = -1),
    ``update_cosine`` (cosine of the released update to the noiseless one) and
    ``matching_loss``.
    """

    images: Tensor  # (B, C, H, W) the true images
    reconstructions: dict[str, Tensor]  # defense name -> (B, C, H, W)
    table: pd.DataFrame


def attack_defenses(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    settings: Sequence[Defense],
    *,
    config: AttackConfig = AttackConfig(),
    candidates: Tensor | None = None,
    truth: Sequence[int] | Tensor | None = None,
    seed: int = 0,
    progress: bool = True,
) -> AttackResult:
    """Release the batch's update under each defence, attack it, score the reconstructions.

    The noise of every setting is one seeded stream of ``privkit.randomness`` (recorded
    research mode: the same draws, scaled, under every defence), the attack's starting guesses
    another, both from ``seed``: a setting differs from another only in its defence, and the
    attack never starts from the noise's own draws. Given
    ``candidates`` (M, C, H, W) and the batch's indices ``truth`` among them, the table also
    holds each reconstruction's :func:`identification_rank` (metric ``rank``).
    """
    _check_batch(images, labels)
    if (candidates is None) != (truth is None):
        raise ValueError("Expected both candidates and truth (for the rank), or neither.")
    names = [s.name for s in settings]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"Expected at least one setting, with distinct names; got {names}.")
    data_range = config.bounds[1] - config.bounds[0]
    rows, reconstructions = [], {}
    for setting in tqdm(settings, desc="defences", disable=not progress):
        noiseless = share_update(model, images, labels, max_grad_norm=setting.max_grad_norm)
        update = share_update(
            model,
            images,
            labels,
            max_grad_norm=setting.max_grad_norm,
            noise_multiplier=setting.noise_multiplier,
            generator=torch_generator(
                randomness="seeded",
                identity={"stream": "reconstruction-defence", "seed": seed},
                device=images.device,
            ),
        )
        result = reconstruct(
            model,
            update,
            image_shape=tuple(images.shape[1:]),
            labels=labels,
            config=config,
            seed=seed,
            progress=progress,
        )
        order = match(result.images, images)
        matched = result.images[torch.as_tensor(order)]
        reconstructions[setting.name] = matched
        common = {
            "batch_size": update.batch_size,
            "defense": setting.name,
            "max_grad_norm": setting.max_grad_norm,
            "noise_multiplier": setting.noise_multiplier,
            "epsilon": setting.epsilon,
            "method": config.method,
            "labels": config.labels,
            "seed": seed,
        }
        per_image = {
            "psnr": psnr(matched, images, data_range=data_range),
            "ssim": ssim(matched, images, data_range=data_range),
            "label_correct": (result.labels[torch.as_tensor(order)].cpu() == labels.cpu())
            .all(dim=1)
            .double()
            .numpy(),
        }
        if candidates is not None:
            per_image["rank"] = identification_rank(matched, candidates, truth)
        rows += [
            {**common, "image": i, "metric": metric, "value": float(values[i])}
            for metric, values in per_image.items()
            for i in range(update.batch_size)
        ]
        cosine = nn.functional.cosine_similarity(
            _flat(update.gradient), _flat(noiseless.gradient), dim=0
        )
        rows.append({**common, "image": -1, "metric": "update_cosine", "value": float(cosine)})
        rows.append(
            {**common, "image": -1, "metric": "matching_loss", "value": result.matching_loss}
        )
    return AttackResult(
        images=images.detach().cpu(), reconstructions=reconstructions, table=pd.DataFrame(rows)
    )


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean of each metric per (batch size, defence), one column per metric, in table order."""
    keys = ["batch_size", "defense", "epsilon", "noise_multiplier"]
    wide = table.pivot_table(
        index=keys, columns="metric", values="value", aggfunc="mean", sort=False
    )
    return wide.reset_index().rename_axis(columns=None)
