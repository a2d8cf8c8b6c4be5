"""Train one model with DP-SGD (or without privacy) on a MedMNIST chest X-ray set.

>>> from privkit.train import TrainConfig
>>> TrainConfig(epsilon=0)
Traceback (most recent call last):
...
ValueError: Expected epsilon=0 > 0.
"""

from __future__ import annotations

import dataclasses
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from privkit import _validate, accounting, budget, data, mechanism, randomness
from privkit.engine import DP_BACKENDS, create_backend
from privkit.engine.averaging import ParameterAverage
from privkit.engine.fast import FastStack, max_batch_size, padded_poisson
from privkit.engine.sampling import poisson_indices
from privkit.mechanism import Mechanism
from privkit.metrics import evaluate
from privkit.models import MODELS, FixedFeatures, create_model


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run; validated on construction.

    Privacy: give ``epsilon`` (the noise is calibrated to reach it after the planned steps)
    or ``noise_multiplier`` (epsilon is then what the accountant reports), not both.
    ``epsilon=math.inf`` trains without privacy through the same loop.
    """

    dataset: str = "pneumoniamnist"
    model: str = "cnn"
    backend: str = "fast"
    epsilon: float | None = 8.0
    noise_multiplier: float | None = None
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    epochs: int = 10
    batch_size: int = 256  # expected Poisson batch size: sample_rate = batch_size / n_train
    lr: float = 0.1  # chosen on the validation split of PneumoniaMNIST (README: tuning)
    momentum: float = 0.9
    ema: float = 0.0  # decay of a moving average of the parameters, evaluated instead (0: off)
    accountant: str = "prv"
    seed: int = 0  # initialisation; also the noise and Poisson draws with randomness="seeded"
    # noise and Poisson draws: OS entropy, or "seeded" (privkit.randomness)
    randomness: str = "secure"
    device: str = "auto"
    data_root: str | None = None

    def __post_init__(self) -> None:
        _validate.one_of(data.DATASETS, dataset=self.dataset)
        _validate.one_of(MODELS, model=self.model)
        _validate.one_of(DP_BACKENDS, backend=self.backend)
        if self.accountant == "gdp":
            raise ValueError(
                "accountant='gdp' can under-report epsilon (a central-limit approximation), so a run "
                "never reports it as spent; expected one of: 'prv', 'rdp' (privkit.accounting.epsilon "
                "still computes GDP for comparison)."
            )
        _validate.one_of(accounting.UPPER_BOUNDS, accountant=self.accountant)
        _validate.one_of(randomness.MODES, randomness=self.randomness)
        if (self.epsilon is None) == (self.noise_multiplier is None):
            raise ValueError(
                f"Give exactly one of epsilon={self.epsilon!r} and "
                f"noise_multiplier={self.noise_multiplier!r}."
            )
        if self.epsilon is not None:
            _validate.positive(epsilon=self.epsilon)
        if self.noise_multiplier is not None:
            _validate.in_range(0, math.inf, noise_multiplier=self.noise_multiplier)
        _validate.in_range(0, 1, low_inclusive=False, high_inclusive=False, delta=self.delta)
        _validate.in_range(
            0, math.inf, low_inclusive=False, high_inclusive=False, max_grad_norm=self.max_grad_norm
        )
        _validate.positive_int(epochs=self.epochs)
        _validate.positive_int(batch_size=self.batch_size)
        _validate.positive(lr=self.lr)
        _validate.in_range(0, 1, high_inclusive=False, momentum=self.momentum)
        _validate.in_range(0, 1, high_inclusive=False, ema=self.ema)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"Expected seed={self.seed!r} to be an integer.")

    @property
    def private(self) -> bool:
        return self.epsilon != math.inf and self.noise_multiplier != 0

    def check_against(self, n_train: int) -> None:
        """The check that needs the training-set size: the batch fits in it (delta < 1/n is
        :func:`privkit.mechanism.plan`'s)."""
        if self.batch_size > n_train:
            raise ValueError(
                f"Expected batch_size={self.batch_size} <= {n_train}, the training-set size."
            )


@dataclass
class TrainResult:
    config: TrainConfig
    mechanism: Mechanism
    backend: str  # what ran: a DP backend, or "nonprivate"
    metrics: dict[str, dict[str, float]]  # split -> metric -> value
    loss_per_epoch: list[float]
    model: nn.Module = field(repr=False)
    epoch_seconds: list[float] = field(default_factory=list)  # training only; shared by a stack
    device: str = ""
    seconds: float = 0.0
    # the ledger's record of this run; its hash anchors the ledger
    spend: budget.Spend | None = None


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def plan(config: TrainConfig, n_train: int, *, sample_rate: float | None = None) -> Mechanism:
    """The mechanism a run will execute (:func:`privkit.mechanism.plan`): Poisson rate
    ``batch_size / n_train``, :func:`privkit.mechanism.steps_of` steps, calibrated noise.

    ``sample_rate``: the rate of the run's most exposed record instead (individualised
    DP-SGD, where records are sampled at different rates): its mechanism bounds every record's.
    """
    config.check_against(n_train)
    return mechanism.plan(
        sample_rate=config.batch_size / n_train if sample_rate is None else sample_rate,
        steps=mechanism.steps_of(n=n_train, batch_size=config.batch_size, epochs=config.epochs),
        delta=config.delta,
        epsilon=config.epsilon,
        noise_multiplier=config.noise_multiplier,
        max_grad_norm=config.max_grad_norm,
        accountant=config.accountant,
        n=n_train,
        who="training examples",
    )


@torch.no_grad()
def logits(model: nn.Module, images: Tensor, batch_size: int = 1024) -> Tensor:
    """The model's logits (before the sigmoid), in evaluation mode: (N, C, H, W) -> (N, L)."""
    model.eval()
    return torch.cat([model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def predict(model: nn.Module, images: Tensor, batch_size: int = 1024) -> Tensor:
    """Probabilities, one per label: (N, C, H, W) -> (N, L), in float64.

    In float32 the sigmoid rounds every logit above about 16.6 to exactly 1, so a confident
    model's positives tie and its AUC is under-reported; float64 keeps them apart up to ~36.
    """
    return torch.sigmoid(logits(model, images, batch_size).double())


def train(
    config: TrainConfig,
    *,
    dataset: data.Dataset | None = None,
    ledger: budget.Ledger | None = None,
    scopes: Sequence[budget.Scope | str] | None = None,
    allow_seeded: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train one model and evaluate it on the validation and test splits.

    Args:
        config: the run; see ``TrainConfig``.
        dataset: already loaded data (on the run's device); loaded from ``config`` otherwise.
        ledger: charge the run's mechanism here before reading data (see ``train_many``).
        scopes: ledger scopes charged in addition to ``dataset:<name>`` (see ``train_many``).
        allow_seeded: let the ledger charge a ``randomness="seeded"`` run (see ``train_many``).
        progress: show a progress bar over the steps.

    Returns:
        A ``TrainResult`` with the executed mechanism (the epsilon actually spent) and metrics.
    """
    return train_many(
        [config],
        dataset=dataset,
        ledger=ledger,
        scopes=scopes,
        allow_seeded=allow_seeded,
        progress=progress,
    )[0]


# Settings that models trained together in one stack must share.
STACK_FIELDS = (
    "dataset",
    "model",
    "backend",
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "ema",
    "device",
    "data_root",
)


def stack_key(config: TrainConfig) -> tuple:
    """Configs with equal keys can train together (``backend='fast'``)."""
    return tuple(getattr(config, f) for f in STACK_FIELDS)


def train_many(
    configs: Sequence[TrainConfig],
    *,
    dataset: data.Dataset | None = None,
    members: Tensor | None = None,
    sample_rates: Tensor | None = None,
    ledger: budget.Ledger | None = None,
    scopes: Sequence[budget.Scope | str] | None = None,
    allow_seeded: bool = False,
    progress: bool = True,
) -> list[TrainResult]:
    """Train several models that share ``STACK_FIELDS``; with ``fast``, all at once.

    Each model keeps its own privacy parameters, clipping norm, noise and Poisson draws: with
    ``randomness="secure"`` from its own generator seeded by the OS, with ``"seeded"`` from a
    stream derived from its configuration (:func:`stream_identity`), so that a seeded model
    trained in a stack equals the same model trained alone, and no two models share a stream.

    Args:
        configs: the runs; they may differ in epsilon or noise, delta, clipping, seed, accountant.
        dataset: already loaded data (on the runs' device); loaded from ``configs`` otherwise.
        members: optional (K, n_train) bool, the training examples each model may use (as for
            the shadow models of a membership-inference attack); needs ``backend='fast'``.
        sample_rates: optional (K, n_train), each example's Poisson rate in each model, in place
            of ``batch_size / n`` (individualised DP-SGD). Each model's ``mechanism`` is then
            that of its most exposed example (its largest rate), which bounds every example's;
            :func:`privkit.individual.train` plans, and charges, every group's rate. Needs
            ``backend='fast'`` and no ``ledger``.
        ledger: a privacy-budget ledger to charge, before any record is read, each model's
            mechanism; a run over budget raises ``budget.BudgetExceededError`` and reads nothing.
            Models charged before a refused one stay charged (conservative: never under-counts).
        scopes: ledger scopes charged in addition to ``dataset:<name>``, the records read
            (always charged); each must lie inside that dataset (an institution, a group).
        allow_seeded: a ledger refuses ``randomness="seeded"`` runs (replayable by anyone who
            reads the configuration) unless this is True, for public benchmark data only; the
            spend then records the seeded stream.
        progress: show a progress bar over the steps.

    Returns:
        One ``TrainResult`` per config, in order. ``seconds`` is the wall time of the call.
    """
    start = time.perf_counter()
    if not configs:
        return []
    keys = {stack_key(c) for c in configs}
    if len(keys) > 1:
        differ = [f for i, f in enumerate(STACK_FIELDS) if len({k[i] for k in keys}) > 1]
        raise ValueError(f"Configs trained together must share {differ}; group them first.")
    first = configs[0]
    device = resolve_device(first.device)
    n = len(dataset.train) if dataset else data.train_size(first.dataset, root=first.data_root)
    if members is None:
        members = torch.ones(len(configs), n, dtype=torch.bool, device=device)
    elif first.backend != "fast":
        raise ValueError(f"members= needs backend='fast', got backend={first.backend!r}.")
    elif tuple(members.shape) != (len(configs), n):
        raise ValueError(
            f"Expected members of shape ({len(configs)}, {n}), got {tuple(members.shape)}."
        )
    members = members.to(device)
    batch_sizes = [float(c.batch_size) for c in configs]  # expected; the update divides by it
    if sample_rates is None:
        mechs = [plan(c, int(m.sum())) for c, m in zip(configs, members)]
        rates = torch.tensor([m.sample_rate for m in mechs], dtype=torch.float64, device=device)
        sample_rates = members * rates[:, None]
    elif first.backend != "fast" or ledger is not None:
        raise ValueError(
            "sample_rates= needs backend='fast' and no ledger (privkit.individual charges)."
        )
    elif tuple(sample_rates.shape) != (len(configs), n):
        raise ValueError(
            f"Expected sample_rates of shape ({len(configs)}, {n}), got {tuple(sample_rates.shape)}."
        )
    else:
        sample_rates = sample_rates.to(device, torch.float64) * members
        batch_sizes = sample_rates.sum(dim=1).tolist()
        mechs = [
            plan(c, int(m.sum()), sample_rate=float(q))
            for c, m, q in zip(configs, members, sample_rates.amax(dim=1).tolist())
        ]
    if (
        len({m.steps for m in mechs}) > 1
    ):  # a stack steps together: each model's count must be its own
        raise ValueError(
            f"Models trained together must plan the same number of steps, got "
            f"{sorted({m.steps for m in mechs})}: give members of (nearly) equal size."
        )
    generators = _generators(configs, device)
    spends: list[budget.Spend | None] = [None] * len(configs)
    if ledger is not None:  # before a single record is read; refused -> BudgetExceededError
        spends = charge_runs(ledger, configs, mechs, scopes=scopes, allow_seeded=allow_seeded)
    if dataset is None:
        dataset = data.load(first.dataset, root=first.data_root, device=device)
    models = [_init_model(c, dataset, device) for c in configs]
    trainable, split = _trainable_parts(models, dataset.train)

    if first.backend == "fast":
        losses, epoch_seconds = _train_fast(
            configs, mechs, trainable, generators, split, sample_rates, batch_sizes, progress
        )
    else:
        losses, epoch_seconds = _train_sequentially(
            configs, mechs, trainable, generators, split, progress
        )

    info = dataset.info
    names = info.label_names if info.task == "multi-label" else None
    seconds = time.perf_counter() - start
    return [
        TrainResult(
            config=c,
            mechanism=m,
            backend=c.backend if c.private else "nonprivate",
            metrics={
                split: evaluate(
                    part.labels, predict(model, part.images), task=info.task, label_names=names
                )
                for split, part in (("val", dataset.val), ("test", dataset.test))
            },
            loss_per_epoch=loss,
            model=model,
            epoch_seconds=times,
            device=str(device),
            seconds=seconds,
            spend=spend,
        )
        for c, m, model, loss, times, spend in zip(
            configs, mechs, models, losses, epoch_seconds, spends
        )
    ]


def stream_identity(config: TrainConfig) -> dict[str, Any]:
    """What names a run's seeded noise stream: every field that defines the run, epsilon and
    seed included, but not where it runs (device, data folder)."""
    values = dataclasses.asdict(config)
    del values["device"], values["data_root"]
    return {"stream": "train", **values}


def _generators(configs: Sequence[TrainConfig], device: torch.device) -> list[torch.Generator]:
    """One generator per model (noise and Poisson draws); seeded models must not share one."""
    seen: dict[str, int] = {}
    for i, c in enumerate(configs):
        if c.randomness == "seeded":
            j = seen.setdefault(randomness.stream_id(stream_identity(c)), i)
            if j != i:
                raise ValueError(
                    f"configs[{j}] and configs[{i}] are the same seeded run and would share their "
                    f"noise; give them different seeds (seed={c.seed})."
                )
    return [
        randomness.torch_generator(
            randomness=c.randomness, identity=stream_identity(c), device=device
        )
        for c in configs
    ]


def charge_runs(
    ledger: budget.Ledger,
    configs: Sequence[TrainConfig],
    mechanisms: Sequence[Mechanism],
    *,
    scopes: Sequence[budget.Scope | str] | None = None,
    run_ids: Sequence[str] | None = None,
    allow_seeded: bool = False,
) -> list[budget.Spend]:
    """Charge each run's mechanism to ``ledger`` before any of its records is read: on
    :func:`charged_scopes`, with its randomness (``secure`` or its seeded stream), under
    ``run_ids`` (default: model, seed and a random suffix). A refused run raises
    ``budget.BudgetExceededError`` (or ``SeededRunError``); the runs before it stay charged."""
    charged = charged_scopes(configs[0].dataset, scopes)
    ids = run_ids or [f"{c.model}-seed{c.seed}-{uuid.uuid4().hex[:8]}" for c in configs]
    return [
        ledger.charge(
            charged,
            m,
            run_id=run,
            actor=budget.default_actor(),
            randomness=randomness.ledger_tag(randomness=c.randomness, identity=stream_identity(c)),
            allow_seeded=allow_seeded,
        )
        for c, m, run in zip(configs, mechanisms, ids, strict=True)
    ]


def charged_scopes(dataset: str, scopes: Sequence[budget.Scope | str] | None) -> list[budget.Scope]:
    """The scopes a run on ``dataset`` charges: the dataset itself, then ``scopes``, each of
    which must lie inside it (a run cannot charge another dataset's budget for its reads).

    >>> [str(s) for s in charged_scopes("pneumoniamnist", ["dataset:pneumoniamnist/institution:h1"])]
    ['dataset:pneumoniamnist', 'dataset:pneumoniamnist/institution:h1']
    """
    whole = budget.Scope(dataset)
    extra = [s if isinstance(s, budget.Scope) else budget.parse_scope(s) for s in scopes or []]
    foreign = [s for s in extra if not whole.contains(s)]
    if foreign:
        variants = [
            dataclasses.replace(s, dataset=dataset)
            for s in foreign
            if s.dataset.casefold() == dataset
        ]
        hint = f" Did you mean '{variants[0]}'?" if variants else ""
        raise ValueError(
            f"scopes={[str(s) for s in foreign]} lie outside dataset:{dataset}, the records this run reads; "
            f"a run charges the dataset it reads, and extra scopes only inside it.{hint}"
        )
    return list(dict.fromkeys([whole, *extra]))


def _init_model(config: TrainConfig, dataset: data.Dataset, device: torch.device) -> nn.Module:
    torch.manual_seed(config.seed)
    return create_model(
        config.model,
        in_channels=dataset.info.n_channels,
        n_outputs=dataset.info.n_labels,
        image_size=dataset.train.images.shape[-1],
    ).to(device)


def _trainable_parts(
    models: list[nn.Module], split: data.Split
) -> tuple[list[nn.Module], data.Split]:
    """What DP-SGD updates, and on which inputs: for ``FixedFeatures`` models (ScatterNet) the
    heads, on features computed once per image (the same gradients, as features have no
    parameters); for any other model, the model on the images."""
    if not isinstance(models[0], FixedFeatures):
        return models, split
    with torch.no_grad():
        features = torch.cat(
            [models[0].features(split.images[i : i + 512]) for i in range(0, len(split), 512)]
        )
    return [m.head for m in models], data.Split(images=features, labels=split.labels)


def _progress(configs: Sequence[TrainConfig], total: int, progress: bool) -> tqdm:
    c = configs[0]
    what = f"{len(configs)} x {c.model}" if len(configs) > 1 else f"{c.model} ε={c.epsilon}"
    return tqdm(total=total, disable=not progress, leave=False, desc=f"{what} ({c.backend})")


def _epoch_timer(device: torch.device) -> Callable[[], float]:
    """Seconds since the last call, after the device finished its queued work."""
    last = [time.perf_counter()]

    def lap() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        elapsed, last[0] = now - last[0], now
        return elapsed

    return lap


Losses = list[list[float]]  # per model, per epoch


def _train_sequentially(
    configs, mechs, models, generators, split, progress
) -> tuple[Losses, Losses]:
    """One model after another, through a per-model backend (``opacus``)."""
    losses, times = [], []
    for config, mech, model, generator in zip(configs, mechs, models, generators):
        backend = create_backend(
            config.backend if config.private else "nonprivate",
            model,
            noise_multiplier=mech.noise_multiplier,
            max_grad_norm=config.max_grad_norm,
            expected_batch_size=config.batch_size,
            lr=config.lr,
            momentum=config.momentum,
            generator=generator,
        )
        per_epoch, seconds = [], []
        average = ParameterAverage(config.ema) if config.ema else None
        bar = _progress([config], mech.steps, progress)
        lap = _epoch_timer(split.images.device)
        for _ in range(config.epochs):
            model.train()
            total = 0.0
            for _ in range(mech.steps // config.epochs):
                idx = poisson_indices(len(split), mech.sample_rate, generator)
                total += backend.step(split.images[idx], split.labels[idx])
                if average:
                    average.update(dict(model.named_parameters()))
                bar.update()
            per_epoch.append(total / mech.steps * config.epochs / config.batch_size)
            seconds.append(lap())
            bar.set_postfix(loss=f"{per_epoch[-1]:.3f}")
        bar.close()
        if average and average.value:
            model.load_state_dict(average.value, strict=False)
        losses.append(per_epoch)
        times.append(seconds)
    return losses, times


def _train_fast(
    configs, mechs, models, generators, split, sample_rates, batch_sizes, progress
) -> tuple[Losses, Losses]:
    """All models at once: stacked parameters, padded Poisson batches (``engine/fast.py``)."""
    first, device = configs[0], sample_rates.device
    used = (sample_rates > 0).sum(dim=1)  # (K,) examples each model may draw
    max_batch = max(max_batch_size(int(k), b / int(k)) for k, b in zip(used, batch_sizes))
    stack = FastStack(
        models,
        noise_multipliers=[m.noise_multiplier for m in mechs],
        max_grad_norms=[c.max_grad_norm if c.private else math.inf for c in configs],
        expected_batch_sizes=batch_sizes,
        lr=first.lr,
        momentum=first.momentum,
        generators=generators,
        max_batch=max_batch,
        ema=first.ema,
    )
    steps_per_epoch = mechs[0].steps // first.epochs
    per_epoch: list[Tensor] = []
    seconds: list[float] = []
    bar = _progress(configs, mechs[0].steps, progress)
    lap = _epoch_timer(device)
    expected = torch.tensor(batch_sizes, device=device)
    for _ in range(first.epochs):
        total = torch.zeros(len(configs), device=device)
        for _ in range(steps_per_epoch):
            idx, weights = padded_poisson(sample_rates, generators, stack.max_batch)  # (K, W)
            total += stack.step(split.images[idx], split.labels[idx], weights)
            bar.update()
        per_epoch.append(total / (steps_per_epoch * expected))
        seconds.append(lap())
        bar.set_postfix(loss=f"{per_epoch[-1].mean().item():.3f}")
    bar.close()
    stack.unstacked()
    return torch.stack(per_epoch, dim=1).tolist(), [list(seconds) for _ in configs]


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """A ``TrainConfig`` from plain values; unknown keys are an error that lists the known."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"Unknown training parameter(s) {unknown}; expected some of: {', '.join(sorted(known))}."
        )
    return TrainConfig(**values)
