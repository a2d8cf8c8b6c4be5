"""Membership inference: was this patient's X-ray in the training data?

Two attacks, both producing one score per (model, record), higher meaning "member"; judge them
with :mod:`privkit.attacks.scores`.

* The loss-threshold attack (Yeom, Giacomelli, Fredrikson & Jha 2018, "Privacy risk in
  machine learning", https://arxiv.org/abs/1709.01604): training records have lower loss, so
  the score is ``-loss`` (Yeom et al. threshold it at the mean training loss; the ROC sweeps
  every threshold).
* LiRA, the likelihood-ratio attack (Carlini, Chien, Nasr, Song, Terzis & Tramer 2022,
  "Membership inference attacks from first principles", https://arxiv.org/abs/2112.03570):
  shadow models trained with and without each record give, per record, Gaussian fits of the
  logit-scaled confidence ``phi = log(p / (1 - p))`` of its true label; the target model's
  ``phi`` is scored by the likelihood ratio of the two fits (online) or by how far it lies
  above the "out" fit (offline).

Protocol (Carlini et al. 2022, Sec. VI): a pool of records (the training split), M models
each trained on a random half with each record in exactly half of the models
(:func:`balanced_membership`, complementary pairs); each model in turn is the target and the
M - 2 models trained independently of it are its shadows (:func:`lira_leave_one_out`); the
scores of all M targets are pooled. :func:`train_shadows` trains the M models at once with
``privkit.train.train_many``.

A target's shadows must not depend on what the target trained on: if they did (its pair
partner trained on exactly the records it did not), the in/out fits would carry the target's
membership past its model, and the attack could beat the DP bound of the model it attacks.
Membership here swaps a record for another (halves of fixed size), so compare with DP's bound
for replacing one record: ``privkit.risk.tpr_bound_mechanism(..., neighbours="substitution")``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from scipy.special import log_expit
from torch import Tensor

from privkit import _validate, data, executors
from privkit.train import TrainConfig, TrainResult, plan, resolve_device, train_many
from privkit.train import logits as model_logits


def log_likelihood(logits: Any, labels: Any) -> np.ndarray:
    """``log P(labels | x)`` of one-logit-per-label models: (n, L), (n, L) -> (n,), float64.

    Labels are independent Bernoulli with ``P(y_k = 1) = sigmoid(z_k)``, so the log-likelihood
    is ``sum_k log sigmoid((2 y_k - 1) z_k)``, computed without forming ``sigmoid``.
    """
    z, y = _logits_labels(logits, labels)
    return log_expit((2 * y - 1) * z).sum(axis=1)


def logit_confidence(logits: Any, labels: Any) -> np.ndarray:
    """LiRA's ``phi = log(p / (1 - p))``, p the model's probability of the true label: (n,).

    Carlini et al. (2022, Sec. IV-C) use this logit scaling because it makes the confidence of
    one record over retrained models approximately Gaussian. Computed stably from the logits:
    for one logit z (PneumoniaMNIST) it is exactly ``z`` for label 1 and ``-z`` for label 0;
    for several labels, p is the probability of the whole label vector and
    ``phi = log p - log(1 - p)`` with ``1 - p = -expm1(log p)``.

    >>> logit_confidence([[40.0], [-3.0]], [[1], [1]]).tolist()
    [40.0, -3.0]
    """
    z, y = _logits_labels(logits, labels)
    if z.shape[1] == 1:
        return ((2 * y - 1) * z)[:, 0]
    log_p = log_expit((2 * y - 1) * z).sum(axis=1)
    with np.errstate(divide="ignore"):
        return log_p - np.log(-np.expm1(log_p))


def loss_scores(logits: Any, labels: Any) -> np.ndarray:
    """The loss-threshold attack's score (Yeom et al. 2018): minus the training loss, (n,).

    The loss is the one training minimises (binary cross-entropy averaged over labels,
    ``privkit.engine.per_sample_loss``).
    """
    z, _ = _logits_labels(logits, labels)
    return log_likelihood(logits, labels) / z.shape[1]


def _logits_labels(logits: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    z = _numpy(logits)
    y = _numpy(labels)
    if z.ndim == 1:
        z = z[:, None]
    if y.ndim == 1:
        y = y[:, None]
    if z.shape != y.shape:
        raise ValueError(f"Expected logits and labels of equal shape, got {z.shape} and {y.shape}.")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("Expected labels of 0/1 values.")
    return z, y


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu()
    return np.asarray(x, dtype=np.float64)


def balanced_membership(n_models: int, n_records: int, *, seed: int = 0) -> np.ndarray:
    """Which records each model trains on: (n_models, n_records) bool, a balanced design.

    Models come in complementary pairs: model 2i trains on a random half of the records and
    model 2i + 1 on the other half, each pair drawn independently. So every record is in
    exactly half of the models (as Carlini et al. 2022 require for leave-one-out evaluation)
    and every model trains on half of the records, up to one for odd ``n_records`` (so all
    plan the same number of steps). A model's partner knows its membership (the complement):
    :func:`lira_leave_one_out` never uses it as the model's shadow.

    >>> design = balanced_membership(4, 5, seed=0)
    >>> design.sum(axis=0).tolist(), design.sum(axis=1).tolist()
    ([2, 2, 2, 2, 2], [2, 3, 2, 3])
    """
    _validate.positive_int(n_models=n_models)
    _validate.positive_int(n_records=n_records)
    if n_models % 2:
        raise ValueError(f"Expected n_models={n_models} to be even (models come in pairs).")
    rng = np.random.default_rng(seed)
    design = np.zeros((n_models, n_records), dtype=bool)
    for pair in range(0, n_models, 2):
        half = rng.permutation(n_records)[: n_records // 2]
        design[pair, half] = True
        design[pair + 1] = ~design[pair]
    return design


def lira_scores(
    target_phi: Any,
    shadow_phi: Any,
    shadow_in: Any,
    *,
    online: bool = True,
    fixed_variance: bool = False,
) -> np.ndarray:
    """LiRA's membership score of each record for one target model (Carlini et al. 2022, Alg. 1).

    For record j, the shadows that trained on it give ``phi ~ N(mu_in, s_in^2)`` and those that
    did not ``N(mu_out, s_out^2)`` (means and standard deviations over shadows).

    * online: ``log N(phi; mu_in, s_in^2) - log N(phi; mu_out, s_out^2)``, the log likelihood
      ratio of the target's ``phi``;
    * offline (no "in" shadows needed, so none trained on the target's records):
      ``(phi - mu_out) / s_out``, a one-sided test against the "out" fit (the paper's
      ``1 - P(Z > phi)`` is an increasing function of it, so the ROC is the same).

    Every record's fit uses the same number of shadows per group (the fewest any record has;
    the others are left out), as in Carlini et al.'s code. ``fixed_variance`` replaces the
    per-record variances by one pooled over all records (the spread of phi around each
    record's own mean), which the paper recommends with few shadows (Sec. VI-A: under 64).

    Args:
        target_phi: (n,) the target model's ``phi`` (:func:`logit_confidence`).
        shadow_phi: (S, n) the shadow models' ``phi`` on the same records.
        shadow_in: (S, n) bool, whether each shadow trained on each record.
        online: the online (in and out) or offline (out only) variant.
        fixed_variance: one global variance instead of one per record.

    Returns:
        (n,) scores, higher meaning "member".

    Raises:
        ValueError: If shapes disagree, or a record has too few shadows for the fit: per-record
            variances need 2 "out" shadows (and 2 "in" online); a fixed variance needs 1 each
            and some record with 2 in a group.
    """
    phi = _numpy(target_phi)
    shadows = _numpy(shadow_phi)
    ins = np.asarray(shadow_in, dtype=bool)
    if phi.ndim != 1 or shadows.shape != ins.shape or shadows.shape[1:] != phi.shape:
        raise ValueError(
            f"Expected target_phi (n,), shadow_phi and shadow_in (S, n); got {phi.shape}, "
            f"{shadows.shape} and {ins.shape}."
        )
    outs = ~ins
    need = 1 if fixed_variance else 2
    groups = [("out", outs)] + ([("in", ins)] if online else [])
    for name, mask in groups:
        fewest = int(mask.sum(axis=0).min())
        if fewest < need:
            raise ValueError(
                f"Expected >= {need} '{name}' shadow model(s) per record for "
                f"fixed_variance={fixed_variance}, got {fewest} for some record."
            )
    # Equal counts for every record (Carlini et al.'s code trims the same way): a fit from fewer
    # shadows is wider-tailed, which would score records with fewer shadows differently by itself.
    groups = [(name, _first(mask, int(mask.sum(axis=0).min()))) for name, mask in groups]
    fits = {name: _gaussian_fit(shadows, mask) for name, mask in groups}
    if fixed_variance:  # one spread for all records: pool the squared deviations of all groups
        squares = sum(((shadows - fits[name][0]) ** 2 * mask).sum() for name, mask in groups)
        count = sum(mask.sum() - mask.shape[1] for _, mask in groups)  # one mean per record fitted
        if count == 0:
            raise ValueError(
                "Expected some record with >= 2 shadows in one group to fit a variance."
            )
        sd = max(math.sqrt(squares / count), _MIN_SD)
        fits = {name: (mean, np.full_like(mean, sd)) for name, (mean, _) in fits.items()}
    mu_out, sd_out = fits["out"]
    if not online:
        return (phi - mu_out) / sd_out
    mu_in, sd_in = fits["in"]
    return _log_normal(phi, mu_in, sd_in) - _log_normal(phi, mu_out, sd_out)


_MIN_SD = 1e-8  # a floor for records whose shadows all agree exactly


def _first(mask: np.ndarray, count: int) -> np.ndarray:
    """``mask`` keeping, in each column, only its first ``count`` True entries."""
    return mask & (np.cumsum(mask, axis=0) <= count)


def _gaussian_fit(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-record mean and unbiased standard deviation (ddof 1) of the masked rows.

    Carlini et al.'s code divides by the count (ddof 0), which shrinks the spread of fits
    from few shadows; ddof 1 does not.
    """
    count = mask.sum(axis=0)
    mean = (values * mask).sum(axis=0) / count
    var = (((values - mean) ** 2) * mask).sum(axis=0) / np.maximum(count - 1, 1)
    return mean, np.maximum(np.sqrt(var), _MIN_SD)


def _log_normal(x: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mean) / sd) ** 2 - np.log(sd)  # the common -log sqrt(2 pi) cancels


def lira_leave_one_out(
    phi: Any, members: Any, *, online: bool = True, fixed_variance: bool = False
) -> np.ndarray:
    """LiRA scores of every model as the target, the models trained independently of it as its shadows.

    ``members`` must be :func:`balanced_membership`'s complementary pairs (rows 2i and 2i + 1).
    Target t's partner t ^ 1 trained on exactly the records t did not, so it is left out: were it
    a shadow, it would sit in the "out" fit of each of t's members and in the "in" fit of each
    non-member, and whatever sets the partner apart (its DP noise, its initialisation) would
    score t's members apart from its non-members, with no help from t's model. The other pairs
    were drawn independently of t's, so each record is in exactly half of t's M - 2 shadows,
    whether t trained on it or not.

    Args:
        phi: (M, n) each model's ``phi`` on each record of the pool.
        members: (M, n) bool, whether each model trained on each record; M even, >= 6 (4
            shadows: 2 "in" and 2 "out" per record).
        online, fixed_variance: as in :func:`lira_scores`.

    Returns:
        (M, n) scores; pool them with ``members`` into :func:`privkit.attacks.scores.attack_metrics`.

    Raises:
        ValueError: If shapes disagree, rows 2i and 2i + 1 are not complementary, or there are
            too few shadows for the fit (:func:`lira_scores`).
    """
    phi = _numpy(phi)
    members = np.asarray(members, dtype=bool)
    if phi.ndim != 2 or phi.shape != members.shape:
        raise ValueError(
            f"Expected phi and members of equal shape (M, n), got {phi.shape} and {members.shape}."
        )
    if len(members) % 2 or not (members[0::2] ^ members[1::2]).all():
        raise ValueError(
            f"Expected members in complementary pairs (rows 2i and 2i + 1, as balanced_membership "
            f"makes them), got {len(members)} rows that are not."
        )
    pair = np.arange(len(phi)) // 2  # (M,) the pair of each model
    per_target = [
        lira_scores(
            phi[t],
            phi[pair != pair[t]],
            members[pair != pair[t]],
            online=online,
            fixed_variance=fixed_variance,
        )
        for t in range(len(phi))
    ]
    return np.stack(per_target)


@dataclass
class ShadowModels:
    """M models trained on halves of a pool of training records, and their outputs on it.

    Attributes:
        pool: (n,) indices of the pool's records in the training split.
        members: (M, n) bool, which pool records each model trained on.
        logits: (M, n, L) each model's logits on each pool record.
        labels: (n, L) the records' labels.
        results: each model's ``TrainResult`` (its mechanism and test metrics).
    """

    pool: np.ndarray
    members: np.ndarray
    logits: np.ndarray
    labels: np.ndarray
    results: list[TrainResult] = field(repr=False)

    @property
    def phi(self) -> np.ndarray:
        """(M, n) LiRA's logit-scaled confidence of each model on each record."""
        return np.stack([logit_confidence(z, self.labels) for z in self.logits])

    @property
    def loss_scores(self) -> np.ndarray:
        """(M, n) the loss-threshold attack's scores (minus each record's loss)."""
        return np.stack([loss_scores(z, self.labels) for z in self.logits])


def train_shadows(
    config: TrainConfig,
    *,
    n_models: int,
    pool_size: int | None = None,
    dataset: data.Dataset | None = None,
    max_stack: int | None = None,
    seed: int = 0,
    executor: str | executors.Executor | None = None,
    progress: bool = True,
) -> ShadowModels:
    """Train ``n_models`` models of ``config``, each on a random half of a pool of records.

    The pool is ``pool_size`` records of the training split drawn at random (default: all of
    it); the halves follow :func:`balanced_membership`. Model k uses seed ``config.seed + k``.
    With a target epsilon the noise is calibrated once for the half-pool size and given to
    every model as its noise multiplier; each model's mechanism (and epsilon) is recorded in
    its ``TrainResult``. Models train through ``train_many`` with ``members=``, up to
    ``max_stack`` at once (default: all, or the Ray executor's ``models_per_gpu`` on a cluster
    with GPUs; on a 2-core CPU 8 half-pools of 500 records took 46 s stacked and 63 s one by
    one); each stack is a unit of work (:func:`shadow_stack`) run by ``executor`` (see
    ``privkit.executors``), so a cluster trains the stacks side by side.

    Args:
        config: the training run (``backend='fast'``), privacy included.
        n_models: M, even, >= 4; leave-one-out LiRA needs M >= 6 (each target then has 2
            "in" and 2 "out" shadows per record, its partner left out).
        pool_size: how many training records the models share; smaller pools overfit more.
        dataset: already loaded data; loaded from ``config`` otherwise.
        max_stack: most models trained at once.
        seed: draws the pool and the membership design.
        executor: where the stacks train: ``"local"``, ``"ray"``, ``"ray:<address>"`` or an
            executor; None reads ``$PRIVKIT_EXECUTOR`` (default local).
        progress: show progress bars.

    Returns:
        The ``ShadowModels``: membership design, logits on the pool, training results (their
        models on the CPU).

    Raises:
        privkit.executors.UnitsFailedError: a stack that failed for good (no models returned).
    """
    _validate.positive_int(n_models=n_models)
    if n_models < 4 or n_models % 2:
        raise ValueError(f"Expected n_models={n_models} to be even and >= 4.")
    runner = executors.resolve(executor)
    if dataset is None:
        where = resolve_device(runner.data_device or config.device)
        dataset = data.load(config.dataset, root=config.data_root, device=where)
    n_train = len(dataset.train)
    if pool_size is None:
        pool_size = n_train
    _validate.in_range(2, n_train, pool_size=pool_size)
    if max_stack is not None:
        _validate.positive_int(max_stack=max_stack)
    rng = np.random.default_rng(seed)
    pool = np.sort(rng.permutation(n_train)[:pool_size])
    design = balanced_membership(n_models, pool_size, seed=int(rng.integers(2**31)))
    members = np.zeros((n_models, n_train), dtype=bool)
    members[:, pool] = design
    if config.private and config.epsilon is not None:  # calibrate once, not once per model
        sigma = plan(config, pool_size // 2).noise_multiplier
        config = replace(config, epsilon=None, noise_multiplier=sigma)
    configs = [replace(config, seed=config.seed + k) for k in range(n_models)]
    gpu = config.device != "cpu"
    stack = max_stack or (runner.gpu_stack() if gpu else None) or n_models
    inner_progress = progress and runner.inner_progress
    units = [
        executors.Unit(
            name=f"shadow models {start}-{min(start + stack, n_models) - 1} of {n_models} ({config.model})",
            fn=shadow_stack,
            data=dataset,
            args=(
                configs[start : start + stack],
                members[start : start + stack],
                pool,
                inner_progress,
            ),
            models=len(configs[start : start + stack]),
            gpu=gpu,
        )
        for start in range(0, n_models, stack)
    ]
    parts: dict[str, tuple[np.ndarray, list[TrainResult]]] = {}
    executors.run(
        units,
        executor=runner,
        on_finished=lambda finished: parts.__setitem__(finished.unit.name, finished.value),
        desc="shadow models",
        progress=progress,
    )
    logits = np.concatenate([parts[u.name][0] for u in units])  # (M, n, L)
    results = [r for u in units for r in parts[u.name][1]]
    labels = (
        dataset.train.labels[torch.as_tensor(pool, device=dataset.train.labels.device)]
        .cpu()
        .numpy()
    )
    return ShadowModels(pool=pool, members=design, logits=logits, labels=labels, results=results)


def shadow_stack(
    dataset: data.Dataset,
    configs: list[TrainConfig],
    members: np.ndarray,
    pool: np.ndarray,
    progress: bool = False,
) -> tuple[np.ndarray, list[TrainResult]]:
    """:func:`train_shadows`' unit of work: train one stack on its halves where it runs.

    Args:
        members: (k, n_train) bool, the records each model trains on.
        pool: (n,) the pool's indices in the training split.

    Returns:
        (k, n, L) each model's logits on the pool, and the models' results, models on the CPU.
    """
    device = resolve_device(configs[0].device)
    dataset = dataset.to(device)
    results = train_many(configs, dataset=dataset, members=torch.tensor(members), progress=progress)
    images = dataset.train.images[torch.as_tensor(pool, device=device)]
    logits = np.stack([model_logits(r.model, images).cpu().numpy() for r in results])
    for r in results:
        r.model.cpu()
    return logits, results
