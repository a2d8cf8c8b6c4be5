"""The server's side: FedAvg and cyclic training over sites that keep their records.

* ``"fedavg"`` (McMahan et al. 2017, "Communication-efficient learning of deep networks from
  decentralized data"): each round every site trains the current model locally and returns
  its update (new - old weights); the server averages the updates, weighted by the sites'
  record counts, and applies the average (times ``server_lr``; with ``server_momentum``,
  FedAvgM of Hsu, Qi & Brown 2019).
* ``"cyclic"`` (cyclic institutional incremental learning, Chang et al. 2018, "Distributed
  deep learning networks among institutions for medical imaging"; Sheller et al. 2020): the
  model visits the sites in turn, each training it for ``local_epochs`` before passing it on;
  one round is one visit to every site. The momentum buffer travels with the model.

Two kinds of privacy, each accounted for what it protects:

* **Sample-level DP at each site** (``epsilon``, ``site_epsilons``): every site runs DP-SGD
  on its records with its own budget (:mod:`privkit.federated.local`); a patient's guarantee
  is their site's epsilon. Charged before training, one spend per site, to the ledger scope
  ``dataset:<name>/institution:<site>``.
* **Site-level DP at the server** (``site_level_epsilon``; DP-FedAvg of McMahan et al. 2018,
  "Learning differentially private recurrent language models"): each round the server samples
  every site with probability ``site_sample_rate``, each participant clips its update to L2
  norm ``update_clip``, and the server adds Gaussian noise of standard deviation
  ``noise_multiplier * update_clip`` to the sum and divides by the expected number of
  participants ``site_sample_rate * n_sites`` (their fixed-denominator estimator). This is the
  Poisson-subsampled Gaussian mechanism over sites, ``rounds`` steps: it protects a whole
  hospital's data, hence each of its patients. With ``site_sample_rate = 1`` there is no
  amplification by sampling. When it is the only protection, it is charged as one spend on
  every participating site's scope; with sample-level DP too, the site spends are what is
  charged (a patient's loss is bounded by either guarantee, so charging both would count it
  twice) and the site-level epsilon is reported in the result.

With ``secure_aggregation=True`` the server receives each update masked
(:mod:`privkit.federated.secure_aggregation`: keys agreed between the sites each round, from
the OS's entropy, never from ``seed``) and learns only their sum; sample-level DP noise is
added at the sites and site-level noise to the revealed sum.

**What leaves a hospital** is its update and, with ``weighting="records"`` (FedAvg's
weights), its record count n. Under add/remove-one neighbouring the exact count is a
query of sensitivity 1 that no noise covers, so it is treated as public by agreement, as
DP-SGD itself treats it: the sample rate q = B/n of the accounted mechanism states it.
A hospital for which n is sensitive uses ``weighting="equal"``: every participant weighs the
same and no count leaves it. Training losses never leave a hospital on the network path
(:mod:`privkit.federated.flower`); the simulation reports them for the researcher.

**Randomness**: every site's Poisson draws and noise, and the server's, come from the OS's
entropy (``randomness="secure"``), so that the coordinator, who holds the configuration,
cannot replay a site's training; ``"seeded"`` derives them from the configuration and the
party's name, for repeatable research on public data (:mod:`privkit.randomness`).
"""

from __future__ import annotations

import dataclasses
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from privkit import _validate, accounting, budget, data, mechanism, randomness
from privkit.engine.gaussian import add_noise
from privkit.engine.per_sample import Params
from privkit.federated import secure_aggregation as secagg
from privkit.federated.local import SitePlan, SiteStack, plan_site
from privkit.federated.sites import Site
from privkit.mechanism import Mechanism
from privkit.metrics import evaluate
from privkit.models import MODELS, create_model
from privkit.train import predict

ALGORITHMS = ("fedavg", "cyclic")
OVER_BUDGET = ("raise", "skip")
WEIGHTINGS = ("records", "equal")  # FedAvg's weight of a site: its record count, or 1 each


@dataclass(frozen=True)
class FederatedConfig:
    """Everything that determines a federated run; validated on construction.

    ``epsilon = inf`` (and no ``site_epsilons``) trains without sample-level privacy;
    ``site_level_epsilon = inf`` without site-level privacy.
    """

    algorithm: str = "fedavg"
    model: str = "cnn"
    rounds: int = 10
    local_epochs: int = 1
    batch_size: int = 256  # expected Poisson batch at each site; see site_batch_size
    lr: float = 0.1
    momentum: float = 0.9
    server_lr: float = 1.0
    server_momentum: float = 0.0
    epsilon: float = math.inf  # sample-level budget of every site
    site_epsilons: Mapping[str, float] | None = None  # per-site budgets, overriding epsilon
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    site_level_epsilon: float = math.inf
    site_level_delta: float = 1e-5
    update_clip: float = 1.0  # L2 bound of a site's update under site-level DP
    site_sample_rate: float = 1.0  # chance that a site joins a round (McMahan 2017: fraction C)
    secure_aggregation: bool = False
    weighting: str = "records"  # "equal": no record count leaves a hospital (see the module)
    accountant: str = "prv"
    seed: int = 0  # initialisation; also the noise and draws with randomness="seeded"
    randomness: str = "secure"  # noise and draws from OS entropy, or "seeded" (privkit.randomness)
    device: str = "cpu"

    def __post_init__(self) -> None:
        _validate.one_of(ALGORITHMS, algorithm=self.algorithm)
        _validate.one_of(MODELS, model=self.model)
        for name in ("rounds", "local_epochs", "batch_size"):
            _validate.positive_int(**{name: getattr(self, name)})
        _validate.positive(lr=self.lr)
        _validate.positive(server_lr=self.server_lr)
        _validate.in_range(0, 1, high_inclusive=False, momentum=self.momentum)
        _validate.in_range(0, 1, high_inclusive=False, server_momentum=self.server_momentum)
        _validate.positive(epsilon=self.epsilon)
        for site, eps in (self.site_epsilons or {}).items():
            _validate.positive(**{f"site_epsilons[{site!r}]": eps})
        _validate.positive(site_level_epsilon=self.site_level_epsilon)
        for name in ("delta", "site_level_delta"):
            _validate.in_range(
                0, 1, low_inclusive=False, high_inclusive=False, **{name: getattr(self, name)}
            )
        _validate.in_range(
            0, math.inf, low_inclusive=False, high_inclusive=False, max_grad_norm=self.max_grad_norm
        )
        _validate.in_range(
            0, math.inf, low_inclusive=False, high_inclusive=False, update_clip=self.update_clip
        )
        _validate.in_range(0, 1, low_inclusive=False, site_sample_rate=self.site_sample_rate)
        _validate.one_of(accounting.UPPER_BOUNDS, accountant=self.accountant)
        _validate.one_of(randomness.MODES, randomness=self.randomness)
        _validate.one_of(WEIGHTINGS, weighting=self.weighting)
        if self.algorithm == "cyclic" and (self.site_level or self.secure_aggregation):
            raise ValueError(
                f"algorithm='cyclic' passes one model from site to site, with nothing to aggregate: "
                f"site_level_epsilon={self.site_level_epsilon} and secure_aggregation="
                f"{self.secure_aggregation} need algorithm='fedavg'."
            )
        if self.algorithm == "cyclic" and self.site_sample_rate != 1:
            raise ValueError(
                f"Expected site_sample_rate=1 for algorithm='cyclic', got {self.site_sample_rate}."
            )

    @property
    def site_level(self) -> bool:
        return math.isfinite(self.site_level_epsilon)

    def site_epsilon(self, site: str) -> float:
        return (self.site_epsilons or {}).get(site, self.epsilon)


@dataclass
class FederatedResult:
    config: FederatedConfig
    sites: list[SitePlan]  # the sites that trained, with the mechanism each ran
    skipped: list[str]  # sites refused by the ledger (on_over_budget='skip'); never read
    server: Mechanism | None  # site-level DP, if any: one step per round, C = update_clip
    metrics: dict[str, dict[str, float]]  # split -> metric -> value
    loss_per_round: list[float]
    model: nn.Module = field(repr=False)
    seconds: float = 0.0

    @property
    def epsilon(self) -> float:
        """The sample-level epsilon of the worst-off patient (the largest over sites)."""
        return max(p.mechanism.epsilon for p in self.sites)


def site_batch_size(algorithm: str, batch_size: int, n_sites: int) -> int:
    """Each site's expected batch that matches centralised training with ``batch_size``.

    FedAvg averages one step of every site, so each site takes ``batch_size / n_sites``: the
    averaged step then sees ``batch_size`` records, and an epoch has as many steps as a
    centralised one (each site samples at the centralised rate ``batch_size / n``). Cyclic
    training takes one site's step at a time, so each site takes the whole ``batch_size``.

    >>> site_batch_size("fedavg", 256, 5), site_batch_size("cyclic", 256, 5)
    (51, 256)
    """
    _validate.one_of(ALGORITHMS, algorithm=algorithm)
    _validate.positive_int(batch_size=batch_size)
    _validate.positive_int(n_sites=n_sites)
    return max(1, batch_size // n_sites) if algorithm == "fedavg" else batch_size


def plan_server(config: FederatedConfig, n_sites: int) -> Mechanism | None:
    """The site-level mechanism (sites Poisson-sampled at ``site_sample_rate``, one Gaussian
    sum of updates clipped to ``update_clip`` per round), noise calibrated to
    ``site_level_epsilon`` after all rounds; ``None`` without site-level DP.

    Raises:
        ValueError: ``site_level_delta >= 1 / n_sites`` (it would allow releasing a whole site).
    """
    if not config.site_level:
        return None
    return mechanism.plan(
        sample_rate=config.site_sample_rate,
        steps=config.rounds,
        delta=config.site_level_delta,
        epsilon=config.site_level_epsilon,
        max_grad_norm=config.update_clip,
        accountant=config.accountant,
        n=n_sites,
        who="site_level_delta, one record per site",
    )


def train_federated(
    config: FederatedConfig,
    sites: Sequence[Site],
    *,
    evaluation: data.Dataset,
    ledger: budget.Ledger | None = None,
    dataset_name: str | None = None,
    on_over_budget: str = "raise",
    allow_seeded: bool = False,
    progress: bool = True,
) -> FederatedResult:
    """Train one model across ``sites`` and evaluate it on ``evaluation``'s val and test splits.

    Args:
        config: the run; see :class:`FederatedConfig`.
        sites: the hospitals (:func:`privkit.federated.sites.split_sites`), distinct names.
        evaluation: a dataset whose ``val`` and ``test`` splits (and ``info``) the server uses;
            its ``train`` split is not read here (the sites hold their own records).
            Under secure aggregation with ``site_sample_rate < 1``, a round that samples
            fewer than 2 sites releases nothing (one update cannot hide in a sum).
        ledger: charge every site's mechanism here before any site's records are read.
        dataset_name: the ledger's dataset name; default ``evaluation.info.name``.
        on_over_budget: ``"raise"`` (a site over its budget stops the run with
            ``budget.BudgetExceededError``; sites charged before it stay charged, as in
            ``train_many``) or ``"skip"`` (that site takes no part, its records are never
            read, and it is listed in ``result.skipped``).
        allow_seeded: let the ledger charge a ``randomness="seeded"`` run (public data only).
        progress: show a progress bar over the rounds.

    Raises:
        ValueError: no sites, repeated names, ``site_epsilons`` naming unknown sites, a
            site's delta >= 1/n, or every site skipped.
        budget.BudgetExceededError: a site over its budget with ``on_over_budget='raise'``.
    """
    start = time.perf_counter()
    _validate.one_of(OVER_BUDGET, on_over_budget=on_over_budget)
    sites = list(sites)
    names = [s.name for s in sites]
    if not sites or not all(isinstance(s, Site) for s in sites):
        raise ValueError(f"Expected sites to be a non-empty list of Site, got {sites!r}.")
    if len(set(names)) != len(names):
        raise ValueError(f"Expected distinct site names, got {names}.")
    unknown = sorted(set(config.site_epsilons or {}) - set(names))
    if unknown:
        raise ValueError(f"site_epsilons names unknown site(s) {unknown}; the sites are {names}.")
    plans, server = plan_run(config, sites)
    skipped = charge(
        ledger,
        config,
        plans,
        server,
        dataset_name=dataset_name or evaluation.info.name,
        on_over_budget=on_over_budget,
        allow_seeded=allow_seeded,
    )
    gens = [site_generator(config, s.name) for s in sites]
    active = [(s, p, g) for s, p, g in zip(sites, plans, gens) if s.name not in skipped]
    if not active:
        raise ValueError(
            f"Every site was over its budget and skipped: {skipped}; nothing to train."
        )
    if config.secure_aggregation and len(active) < 2:
        raise ValueError(
            f"secure_aggregation=True needs at least 2 sites to hide an update in a sum; "
            f"got {[s.name for s, _, _ in active]}."
        )

    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    model = create_model(
        config.model,
        in_channels=evaluation.info.n_channels,
        n_outputs=evaluation.info.n_labels,
        image_size=evaluation.val.images.shape[-1],
    ).to(device)
    params = {k: v.detach() for k, v in model.named_parameters()}
    run = _fedavg if config.algorithm == "fedavg" else _cyclic
    params, losses = run(config, model, params, active, server, len(sites), progress)
    model.load_state_dict(params, strict=False)
    info = evaluation.info
    label_names = info.label_names if info.task == "multi-label" else None
    metrics = {
        split: evaluate(
            part.labels,
            predict(model, part.images.to(device)),
            task=info.task,
            label_names=label_names,
        )
        for split, part in (("val", evaluation.val), ("test", evaluation.test))
    }
    return FederatedResult(
        config,
        [p for _, p, _ in active],
        skipped,
        server,
        metrics,
        losses,
        model,
        time.perf_counter() - start,
    )


def plan_run(
    config: FederatedConfig, sites: Sequence[Site]
) -> tuple[list[SitePlan], Mechanism | None]:
    """Every site's mechanism (sample-level DP) and the server's (site-level DP, if any)."""
    plans = [site_plan(config, s.name, len(s)) for s in sites]
    return plans, plan_server(config, len(sites))


def site_plan(config: FederatedConfig, site: str, n_records: int) -> SitePlan:
    """A site's DP-SGD mechanism under ``config``, at its own epsilon (:func:`plan_site`)."""
    return plan_site(
        site,
        n_records,
        epsilon=config.site_epsilon(site),
        delta=config.delta,
        batch_size=config.batch_size,
        local_epochs=config.local_epochs,
        rounds=config.rounds,
        max_grad_norm=config.max_grad_norm,
        accountant=config.accountant,
    )


def charge_run(
    ledger: budget.Ledger,
    config: FederatedConfig,
    sites: Sequence[Site],
    *,
    dataset_name: str,
    allow_seeded: bool = False,
) -> None:
    """Charge a run's sites to ``ledger`` as :func:`train_federated` would before reading
    records, for a driver that then trains the run elsewhere (without a ledger).

    Raises:
        budget.BudgetExceededError: a site over its budget; the sites before it stay charged.
    """
    plans, server = plan_run(config, sites)
    charge(ledger, config, plans, server, dataset_name=dataset_name, allow_seeded=allow_seeded)


def charge(
    ledger: budget.Ledger | None,
    config: FederatedConfig,
    plans: Sequence[SitePlan],
    server: Mechanism | None,
    *,
    dataset_name: str,
    on_over_budget: str = "raise",
    allow_seeded: bool = False,
    run: str | None = None,
) -> list[str]:
    """Charge the sites' ledger scopes before any of their records is read; return the sites
    skipped for want of budget (``on_over_budget="skip"``).

    Each site is charged its own DP-SGD mechanism (``plans``); when site-level DP is the only
    protection, the server's mechanism is charged once on every site's scope. A hospital on
    the network path charges its own ledger with its one plan (:mod:`privkit.federated.flower`).
    ``run`` names the spends (default: the algorithm, the seed and a random suffix).
    """
    if ledger is None:
        return []
    run = run or f"{config.algorithm}-seed{config.seed}-{uuid.uuid4().hex[:8]}"
    if server is not None and not any(p.mechanism.private for p in plans):  # site-level DP only
        charge_mechanism(
            ledger,
            [budget.Scope(dataset_name, institution=p.site) for p in plans],
            server,
            config=config,
            party="server",
            run_id=f"{run}-server",
            allow_seeded=allow_seeded,
        )
        return []
    skipped = []
    for plan in plans:
        try:
            charge_mechanism(
                ledger,
                [budget.Scope(dataset_name, institution=plan.site)],
                plan.mechanism,
                config=config,
                party=f"site:{plan.site}",
                run_id=f"{run}-{plan.site}",
                allow_seeded=allow_seeded,
            )
        except budget.BudgetExceededError:
            if on_over_budget == "raise":
                raise
            skipped.append(plan.site)
    return skipped


def charge_mechanism(
    ledger: budget.Ledger,
    scopes: Sequence[budget.Scope | str],
    mech: Mechanism,
    *,
    config: FederatedConfig,
    party: str,
    run_id: str,
    allow_seeded: bool = False,
) -> budget.Spend:
    """Charge one party's mechanism (a site's DP-SGD, or the server's site-level sum) on
    ``scopes``, with the party's randomness: the one place the federated code calls the ledger
    (:func:`charge`, and the Flower coordinator)."""
    return ledger.charge(
        list(scopes),
        mech,
        run_id=run_id,
        actor=budget.default_actor(),
        randomness=randomness.ledger_tag(
            randomness=config.randomness, identity=stream_identity(config, party)
        ),
        allow_seeded=allow_seeded,
    )


def stream_identity(config: FederatedConfig, party: str) -> dict:
    """What names a party's seeded stream (a site's name, or ``"server"``): the whole config,
    without the device, and the party, so that no two hospitals or runs share a stream."""
    values = dataclasses.asdict(config)
    del values["device"]
    return {"stream": "federated", "party": party, **values}


def site_generator(config: FederatedConfig, site: str) -> torch.Generator:
    """A site's generator (its Poisson draws and noise): from the OS, or seeded by the config
    with ``randomness="seeded"``; never one that the coordinator could rebuild in a deployment."""
    return randomness.torch_generator(
        randomness=config.randomness,
        identity=stream_identity(config, f"site:{site}"),
        device=config.device,
    )


def server_generator(config: FederatedConfig) -> torch.Generator:
    """The server's generator: which sites join a round, and site-level noise."""
    return randomness.torch_generator(
        randomness=config.randomness,
        identity=stream_identity(config, "server"),
        device=config.device,
    )


def flatten(params: Params) -> torch.Tensor:
    """All parameters as one vector, in the order of ``params``."""
    return torch.cat([v.reshape(-1) for v in params.values()])


def unflatten(vector: torch.Tensor, like: Params) -> Params:
    sizes = [v.numel() for v in like.values()]
    return {k: part.view_as(v) for (k, v), part in zip(like.items(), torch.split(vector, sizes))}


def clip_update(update: torch.Tensor, bound: float) -> torch.Tensor:
    """Scale ``update`` to L2 norm at most ``bound`` (McMahan et al. 2018, flat clipping).

    >>> clip_update(torch.tensor([3.0, 4.0]), 1.0)
    tensor([0.6000, 0.8000])
    """
    return update * min(1.0, bound / (float(update.norm()) + 1e-12))


def sample_sites(config: FederatedConfig, n_sites: int, generator: torch.Generator) -> list[int]:
    """The sites (indices) that join a round: each with probability ``site_sample_rate`` (one
    uniform draw per site from the server's ``generator``), or all of them when it is 1."""
    if config.site_sample_rate == 1:
        return list(range(n_sites))
    draws = torch.rand(n_sites, generator=generator, device=generator.device)
    return [i for i in range(n_sites) if draws[i] < config.site_sample_rate]


def server_step(
    config: FederatedConfig,
    params: Params,
    aggregate: torch.Tensor,
    velocity: torch.Tensor | None,
    server: Mechanism | None,
    n_sites: int,
    generator: torch.Generator,
) -> tuple[Params, torch.Tensor]:
    """Apply one round's aggregate to the global model; return it and the server's momentum.

    ``aggregate`` is the flat weighted average of the participants' updates, or under site-level
    DP their clipped sum over the expected number of participants ``q * N``; to that the server
    adds Gaussian noise of standard deviation ``noise_multiplier * update_clip / (q * N)``
    (DP-FedAvg, McMahan et al. 2018; :func:`privkit.engine.gaussian.add_noise`), then steps by
    ``server_lr`` with ``server_momentum``.
    """
    if server is not None:
        expected = server.sample_rate * n_sites
        std = server.noise_multiplier * server.max_grad_norm / expected
        aggregate = add_noise({"mean": aggregate}, std=std, generator=generator)["mean"]
    velocity = aggregate if velocity is None else config.server_momentum * velocity + aggregate
    return unflatten(flatten(params) + config.server_lr * velocity, params), velocity


def local_round(
    config: FederatedConfig,
    model: nn.Module,
    params: Params,
    group: Sequence[tuple[Site, SitePlan, torch.Generator]],
    stacks: dict[tuple[str, ...], SiteStack],
    momentum_buffers: Sequence[Params | None] | None = None,
) -> list[tuple[Params, Params, float]]:
    """Each site of ``group`` trains ``params`` locally: one :class:`SiteStack` per set of sites
    with as many steps per round, built once per run (kept in ``stacks``); returns each site's
    parameters, momentum and loss, in ``group``'s order."""
    out: dict[int, tuple[Params, Params, float]] = {}
    by_steps: dict[int, list[int]] = {}
    for i, (_, plan, _) in enumerate(group):
        by_steps.setdefault(plan.steps_per_round, []).append(i)
    for members in by_steps.values():
        sites, plans, gens = zip(*(group[i] for i in members))
        key = tuple(s.name for s in sites)
        if key not in stacks:
            stacks[key] = SiteStack(
                model, sites, plans, gens, lr=config.lr, momentum=config.momentum
            )
        momenta = [momentum_buffers[i] for i in members] if momentum_buffers else None
        for i, result in zip(members, zip(*stacks[key].train(params, momenta))):
            out[i] = result
    return [out[i] for i in range(len(group))]


def _fedavg(config, model, params, active, server, n_sites, progress) -> tuple[Params, list[float]]:
    server_gen = server_generator(config)
    stacks: dict[tuple[str, ...], SiteStack] = {}
    velocity, losses = None, []
    for _ in tqdm(
        range(config.rounds), desc=f"fedavg, {len(active)} sites", disable=not progress, leave=False
    ):
        chosen = sample_sites(config, len(active), server_gen)
        total_records = max(1, sum(len(active[i][0]) for i in chosen))
        trained = local_round(config, model, params, [active[i] for i in chosen], stacks)
        contributions, round_loss = {}, 0.0
        for i, (new, _, loss) in zip(chosen, trained):  # each site sends only its update
            site = active[i][0]
            update = flatten(new) - flatten(params)
            if server is not None:  # DP-FedAvg: clip, fixed denominator q * N
                weight = 1.0 / (server.sample_rate * n_sites)
                update = clip_update(update, server.max_grad_norm)
            elif config.weighting == "records":
                weight = len(site) / total_records
            else:
                weight = 1.0 / len(chosen)
            contributions[site.name] = (weight * update).double().cpu().numpy()
            round_loss += loss * len(site) / total_records
        length = sum(v.numel() for v in params.values())
        if not config.secure_aggregation:
            summed = sum(contributions.values(), np.zeros(length))
        elif len(contributions) >= 2:  # the participants run the protocol afresh: new keys, masks
            summed = secagg.secure_sum(contributions)
        else:  # one update alone cannot be hidden in a sum: this round releases nothing
            losses.append(round_loss)
            continue
        average = torch.as_tensor(summed, dtype=torch.float32, device=flatten(params).device)
        params, velocity = server_step(
            config, params, average, velocity, server, n_sites, server_gen
        )
        losses.append(round_loss)
    return params, losses


def _cyclic(config, model, params, active, server, n_sites, progress) -> tuple[Params, list[float]]:
    stacks: dict[tuple[str, ...], SiteStack] = {}
    momentum, losses = None, []
    total_records = sum(len(s) for s, _, _ in active)
    for _ in tqdm(
        range(config.rounds), desc=f"cyclic, {len(active)} sites", disable=not progress, leave=False
    ):
        round_loss = 0.0
        for visit in active:  # the model visits each site in turn, its momentum with it
            [(params, momentum, loss)] = local_round(
                config, model, params, [visit], stacks, [momentum]
            )
            round_loss += loss * len(visit[0]) / total_records
        losses.append(round_loss)
    return params, losses
