"""privkit's FedAvg as a Flower app (Beutel et al. 2020): hospitals on a real network, deployed
as Flower deploys today (SuperLink, SuperNodes, ``flwr run``), started with ``privkit flower
server`` (the coordinator's run) and ``privkit flower client`` (a hospital's SuperNode), whose
options are the configuration dataclasses' fields (:mod:`privkit.federated.deployment`).
Optional extra: ``pip install 'privkit[flower]'``; the app folder is ``apps/hospitals/``.

* :data:`client_app` runs at each hospital, next to its SuperNode. Its records, its name and
  its ledger come from the SuperNode's node configuration
  (:class:`~privkit.federated.deployment.NodeConfig`), never from the coordinator:
  ``data-root`` (a folder holding ``<dataset>.npz`` in MedMNIST's format; a missing file is
  an error, never a download), ``site`` (the institution id of its ledger
  scope), ``ledger`` (its privacy ledger; charged with the whole run's mechanism when the
  first round arrives, before a record is read, and only once per run), ``allow-seeded``
  (accept a ``randomness="seeded"`` run: public data only), ``require-secure-aggregation``
  and ``device``. Each round it trains the received model with privkit's local DP-SGD
  (:func:`privkit.federated.local.local_training`, the engine's step) and sends back its update and the count
  its ``weighting`` states, nothing else (see :mod:`privkit.federated.algorithms`, "What
  leaves a hospital"). Its random generator lives in the SuperNode's state for the run.
* :data:`server_app` runs at the coordinator's SuperLink: FedAvg with ``server_lr`` and
  ``server_momentum``, site sampling and site-level DP-FedAvg exactly as
  :func:`~privkit.federated.algorithms.train_federated` (the same
  :func:`~privkit.federated.algorithms.sample_sites` and
  :func:`~privkit.federated.algorithms.server_step`), the site-level mechanism accounted by
  :func:`~privkit.federated.algorithms.plan_server` and charged on the server's ledger before
  the first round; the final model goes to ``out``.
* With ``secure-aggregation = true`` every round runs Flower's SecAgg+ (Bell et al. 2020;
  ``SecAggPlusWorkflow`` at the server, ``secaggplus_mod`` at the hospitals): keys agreed by
  ECDH between the hospitals each round, every hospital a neighbour of every other, all
  shares needed to unmask, so the server receives masked vectors and learns only their sum.
  Updates are quantised to 2^24 levels over ``[-r, r]`` (``r = update_clip`` under site-level
  DP, where no coordinate can exceed it; else ``secagg-clipping-range``). A hospital refuses
  to send its update in the clear when the run or its own node configuration asks for
  secure aggregation, and a SecAgg+ setup with fewer neighbours or a lower threshold than
  privkit's server asks for. Flower's masks are drawn from ``numpy.random.RandomState`` seeded with
  the 32-bit XOR of a base64 text key, whose top bits are always zero: at most 28 bits per
  pairwise mask, which a curious server might search; privkit's own protocol
  (:mod:`privkit.federated.secure_aggregation`) does not share that limit.

The run configuration (``[tool.flwr.app.config]``, overridden by ``privkit flower server``'s
options)
holds every :class:`~privkit.federated.algorithms.FederatedConfig` field in kebab case
(except ``site_epsilons`` and ``device``) and the app's own keys
(:class:`~privkit.federated.deployment.AppConfig`).
:func:`simulate` runs the same apps on Flower's simulation runtime, for many hospitals on
one machine. privkit's torch-based modules are imported where they are used: a SuperNode
starts a fresh ClientApp process for every message, and three of SecAgg+'s four messages per
round need no torch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.app.message_type import MessageType
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import (
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server import Grid, LegacyContext, ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import ServerApp

from privkit.federated.deployment import federated_config, run_config

if TYPE_CHECKING:
    import torch

    from privkit.federated.algorithms import FederatedConfig
    from privkit.mechanism import Mechanism

QUANTIZATION_RANGE = 2**24  # SecAgg+ levels per coordinate; the sum of all sites stays below 2^32
MODULUS_RANGE = 2**32
MAX_SITES = MODULUS_RANGE // QUANTIZATION_RANGE - 1
_STATE = "privkit"  # the hospital's record in its SuperNode's state for the run


def _app_value(run: Mapping[str, Any], key: str) -> Any:
    if key not in run:
        raise ValueError(
            f"The run configuration lacks {key!r}; apps/hospitals/pyproject.toml declares it."
        )
    return run[key]


# ----------------------------------------------------------------------------------------------
# The hospital: ClientApp
# ----------------------------------------------------------------------------------------------


def _secure_aggregation_policy(
    msg: Message, context: Context, call_next: Callable, *, run: Mapping, node: Mapping
) -> Message:
    """Run SecAgg+ on training messages that carry it, if its setup is privkit's (every
    participant a neighbour of every other, all shares needed); refuse a training message in the
    clear when the run (``secure-aggregation``) or the hospital (``require-secure-aggregation``)
    wants secure aggregation."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        setup = msg.content.config_records[RECORD_KEY_CONFIGS]
        if setup.get(Key.STAGE) == Stage.SETUP and not (
            setup.get(Key.SAMPLE_NUMBER) == setup.get(Key.SHARE_NUMBER) == setup.get(Key.THRESHOLD)
        ):  # fewer neighbours mean fewer masks; a lower threshold lets fewer parties unmask
            raise PermissionError(
                "This hospital takes part in SecAgg+ only with every participant as its neighbour and "
                "every share needed to unmask."
            )
        return secaggplus_mod(msg, context, call_next)
    run = {**run, **context.run_config}
    node = {**node, **context.node_config}
    if bool(run.get("secure-aggregation", False)) or bool(
        node.get("require-secure-aggregation", False)
    ):
        raise PermissionError(
            "This hospital sends its update only under secure aggregation; the server asked for "
            "it in the clear."
        )
    return call_next(msg, context)


class HospitalClient(NumPyClient):
    """A hospital's Flower client: each round, local DP-SGD from the received model, then its update.

    Args:
        context: the SuperNode's context for this run (node and run configuration, and the
            state kept between rounds: rounds done, the random generator).
        run: the run configuration (the context's wins where both have a key).
        node: the node configuration (the context's wins where both have a key).
    """

    def __init__(
        self, context: Context, *, run: Mapping[str, Any], node: Mapping[str, Any]
    ) -> None:
        self.context = context
        self.run = {**run, **context.run_config}
        self.node = {**node, **context.node_config}

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        import torch

        from privkit.federated.algorithms import clip_update, flatten, site_generator, unflatten
        from privkit.federated.local import local_training
        from privkit.models import create_model

        cfg = federated_config(self.run, device=str(self.node.get("device", "cpu")))
        state = dict(self.context.state.config_records.get(_STATE, ConfigRecord()))
        rounds = int(state.get("rounds", 0))
        if rounds >= cfg.rounds:  # the ledger was charged for this many
            raise RuntimeError(f"This hospital was charged for {cfg.rounds} rounds; refusing more.")
        site, plan = self._site(cfg, state)
        generator = site_generator(cfg, site.name)
        if "generator" in state:  # continue the stream of the earlier rounds
            generator.set_state(
                torch.from_numpy(np.frombuffer(state["generator"], dtype=np.uint8).copy())
            )
        size = int(_app_value(self.run, "image-size"))
        model = create_model(
            cfg.model,
            in_channels=site.train.images.shape[1],
            n_outputs=site.train.labels.shape[1],
            image_size=size,
        ).to(cfg.device)
        names = [k for k, _ in model.named_parameters()]
        received = {
            k: torch.as_tensor(v, device=cfg.device) for k, v in zip(names, parameters, strict=True)
        }
        new, _, _ = local_training(
            model, received, site, plan, lr=cfg.lr, momentum=cfg.momentum, generator=generator
        )
        update = flatten(new) - flatten(received)
        if cfg.site_level:  # DP-FedAvg: the update clipped; the server's noise covers it
            update = clip_update(update, cfg.update_clip)
        count = 1 if cfg.site_level or cfg.weighting == "equal" else len(site)
        if cfg.secure_aggregation and count > int(_app_value(self.run, "max-records")):
            raise ValueError(
                f"This hospital's {count} records exceed max-records; SecAgg+ would overflow."
            )
        state.update(
            rounds=rounds + 1,
            generator=generator.get_state().numpy().tobytes(),
            plan=json.dumps(dataclasses.asdict(plan)),
        )
        self.context.state.config_records[_STATE] = ConfigRecord(state)
        # The loss stays here: it is not covered by the accounted mechanism.
        return [v.cpu().numpy() for v in unflatten(update, received).values()], count, {}

    def _site(self, cfg: FederatedConfig, state: dict) -> tuple[Any, Any]:
        """The hospital's records and plan; on the run's first round its ledger is charged first
        (``state`` holds the plan charged, for the later rounds)."""
        from privkit import budget, data
        from privkit.federated.algorithms import charge as charge_ledger
        from privkit.federated.algorithms import plan_server, site_plan
        from privkit.federated.local import SitePlan
        from privkit.federated.sites import Site, split_sites
        from privkit.mechanism import Mechanism

        dataset, size = (
            str(_app_value(self.run, "dataset")),
            int(_app_value(self.run, "image-size")),
        )
        if "data-root" not in self.node:
            raise ValueError(
                "The SuperNode's node configuration lacks 'data-root' (the folder with the "
                f'hospital\'s {dataset}.npz): --node-config \'data-root="/path" site="name"\'.'
            )
        root = Path(str(self.node["data-root"]))
        path = data.dataset_path(dataset, root, size)
        if not path.is_file():  # a hospital trains on its own records, never on a download
            raise FileNotFoundError(
                f"This hospital's records are missing: no {path.name} in its data-root."
            )
        partition = self.node.get("partition-id")
        if partition is not None:  # research: a public file split as split_sites does (read first)
            sites = split_sites(
                data.load(dataset, root=root, size=size, device=cfg.device).train,
                n_sites=int(self.node["num-partitions"]),
                scheme=str(_app_value(self.run, "partition-scheme")),
                alpha=float(_app_value(self.run, "partition-alpha")),
                seed=int(_app_value(self.run, "partition-seed")),
            )
            mine = sites[int(partition)]
            name, n, records = mine.name, len(mine), mine.train
        elif "site" in self.node:
            name, n, records = None, data.train_size(dataset, root=root, size=size), None
        else:
            raise ValueError(
                "The SuperNode's node configuration lacks 'site', the hospital's institution id."
            )
        name = str(self.node.get("site", name))
        if "plan" in state:  # the mechanism charged on the first round
            values = json.loads(state["plan"])
            plan = SitePlan(**{**values, "mechanism": Mechanism(**values["mechanism"])})
        else:
            plan = site_plan(cfg, name, n)
            if self.node.get("ledger"):  # refused -> BudgetExceededError, and nothing is read
                charge_ledger(
                    budget.Ledger(str(self.node["ledger"])),
                    cfg,
                    [plan],
                    plan_server(cfg, int(_app_value(self.run, "n-sites"))),
                    dataset_name=dataset,
                    allow_seeded=bool(self.node.get("allow-seeded", False)),
                    run=f"flower-run{self.context.run_id}",
                )
        if records is None:
            records = data.load(dataset, root=root, size=size, device=cfg.device).train
        return Site(name, records), plan


def make_client_app(
    *, run: Mapping[str, Any] | None = None, node: Mapping[str, Any] | None = None
) -> ClientApp:
    """A hospital's ClientApp; ``run`` and ``node`` fill in what the context lacks (Flower's
    simulation runtime gives only ``partition-id`` and ``num-partitions``)."""
    run, node = dict(run or {}), dict(node or {})

    def client_fn(context: Context) -> Any:
        return HospitalClient(context, run=run, node=node).to_client()

    policy = functools.partial(_secure_aggregation_policy, run=run, node=node)
    return ClientApp(client_fn=client_fn, mods=[policy])


client_app = make_client_app()


# ----------------------------------------------------------------------------------------------
# The coordinator: ServerApp
# ----------------------------------------------------------------------------------------------


class PrivkitFedAvg(FedAvg):
    """Flower's FedAvg strategy doing privkit's server round: every hospital of ``n_sites``
    connected, each sampled with ``site_sample_rate`` (in node-id order), the weighted average
    of their updates (or, under site-level DP, their clipped sum over ``q * N`` plus noise)
    applied with ``server_lr`` and ``server_momentum``."""

    def __init__(
        self,
        config: FederatedConfig,
        *,
        n_sites: int,
        params: dict[str, torch.Tensor],
        server: Mechanism | None,
        generator: torch.Generator,
        timeout: float,
    ) -> None:
        initial = ndarrays_to_parameters([v.cpu().numpy() for v in params.values()])
        super().__init__(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=n_sites,
            min_available_clients=n_sites,
            min_evaluate_clients=0,
            initial_parameters=initial,
            accept_failures=False,
        )
        self.config, self.n_sites, self.params, self.server = config, n_sites, params, server
        self.generator, self.timeout, self.velocity = generator, timeout, None
        self.applied, self.skipped = 0, 0  # rounds applied; rounds sampling too few hospitals

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        from privkit.federated.algorithms import sample_sites

        if not client_manager.wait_for(self.n_sites, timeout=int(self.timeout)):
            raise RuntimeError(
                f"Only {client_manager.num_available()} of n-sites={self.n_sites} hospitals "
                f"connected within {self.timeout:g} s."
            )
        nodes = sorted(client_manager.all().values(), key=lambda proxy: int(proxy.cid))
        if len(nodes) != self.n_sites:
            raise RuntimeError(
                f"Expected n-sites={self.n_sites} hospitals, {len(nodes)} are connected."
            )
        chosen = sample_sites(self.config, len(nodes), self.generator)
        if len(chosen) < (2 if self.config.secure_aggregation else 1):  # nothing can be released
            self.skipped += 1
            return []
        return [(nodes[i], FitIns(parameters, {})) for i in chosen]

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        return []  # no metric leaves a hospital

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list
    ) -> tuple[Parameters, dict[str, Scalar]]:
        import torch

        from privkit.federated.algorithms import server_step

        if failures:
            raise RuntimeError(
                f"Round {server_round}: {len(failures)} hospital(s) failed ({failures[0]!r}); "
                "no partial average."
            )
        counts = [r.num_examples for _, r in results]
        updates = [
            np.concatenate([a.ravel() for a in parameters_to_ndarrays(r.parameters)])
            for _, r in results
        ]
        average = sum(c / sum(counts) * u.astype(np.float64) for c, u in zip(counts, updates))
        if self.server is not None:  # the clipped sum over the expected number of participants
            average = average * len(results) / (self.server.sample_rate * self.n_sites)
        aggregate = torch.as_tensor(average, dtype=torch.float32, device=self.config.device)
        self.params, self.velocity = server_step(
            self.config,
            self.params,
            aggregate,
            self.velocity,
            self.server,
            self.n_sites,
            self.generator,
        )
        self.applied += 1
        return ndarrays_to_parameters([v.cpu().numpy() for v in self.params.values()]), {}


def serve(
    grid: Grid, context: Context, *, run: Mapping[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """The ServerApp's work: ``config.rounds`` rounds of FedAvg over the hospitals; writes the
    final model to ``out`` (npz, one array per parameter name) and returns it.

    Raises:
        ValueError: a configuration the Flower path does not run (cyclic training, too few or
            too many hospitals for secure aggregation).
        budget.BudgetExceededError: site-level DP beyond the coordinator's budget.
        RuntimeError: a hospital failed or did not connect, or a round was not applied.
    """
    import torch

    from privkit import _validate, budget, data
    from privkit._io import atomic_write
    from privkit.federated.algorithms import charge_mechanism, plan_server, server_generator
    from privkit.models import create_model

    run = {**(run or {}), **context.run_config}
    config = federated_config(run)
    n_sites = int(_app_value(run, "n-sites"))
    _validate.positive_int(n_sites=n_sites)
    if config.algorithm != "fedavg":
        raise ValueError(f"The Flower path runs algorithm='fedavg', got {config.algorithm!r}.")
    if config.secure_aggregation and not 2 <= n_sites <= MAX_SITES:
        raise ValueError(f"Secure aggregation needs n-sites={n_sites} in [2, {MAX_SITES}].")
    server = plan_server(config, n_sites)
    dataset = str(_app_value(run, "dataset"))
    if server is not None and _app_value(run, "server-ledger"):  # before any update is sent
        charge_mechanism(
            budget.Ledger(str(run["server-ledger"])),
            [str(budget.Scope(dataset))],
            server,
            config=config,
            party="server",
            run_id=f"flower-run{context.run_id}-server",
            allow_seeded=bool(_app_value(run, "server-allow-seeded")),
        )
    info = data.info(dataset)
    torch.manual_seed(config.seed)  # the simulation's initialisation
    model = create_model(
        config.model,
        in_channels=info.n_channels,
        n_outputs=info.n_labels,
        image_size=int(_app_value(run, "image-size")),
    )
    timeout = float(_app_value(run, "round-timeout"))
    strategy = PrivkitFedAvg(
        config,
        n_sites=n_sites,
        params={k: v.detach() for k, v in model.named_parameters()},
        server=server,
        generator=server_generator(config),
        timeout=timeout,
    )
    fit = None
    if config.secure_aggregation:
        records = config.weighting == "records" and server is None
        fit = SecAggPlusWorkflow(
            num_shares=1.0,
            reconstruction_threshold=1.0,
            max_weight=float(_app_value(run, "max-records")) if records else 1.0,
            clipping_range=(
                server.max_grad_norm
                if server is not None
                else float(_app_value(run, "secagg-clipping-range"))
            ),
            quantization_range=QUANTIZATION_RANGE,
            modulus_range=MODULUS_RANGE,
            timeout=timeout,
        )
    legacy = LegacyContext(
        context=context,
        config=ServerConfig(num_rounds=config.rounds, round_timeout=timeout),
        strategy=strategy,
    )
    DefaultWorkflow(fit_workflow=fit)(grid, legacy)
    if strategy.applied + strategy.skipped != config.rounds:
        raise RuntimeError(
            f"Only {strategy.applied} of {config.rounds} rounds were applied; see the log."
        )
    weights = {k: v.cpu().numpy() for k, v in strategy.params.items()}
    atomic_write(str(_app_value(run, "out")), lambda tmp: np.savez(tmp.open("wb"), **weights))
    return weights


def make_server_app(*, run: Mapping[str, Any] | None = None) -> ServerApp:
    """The coordinator's ServerApp; ``run`` fills in what the context's run configuration lacks."""
    app = ServerApp()
    app.main()(functools.partial(serve, run=run))
    return app


server_app = make_server_app()


def load_weights(path: str | Path) -> dict[str, np.ndarray]:
    """The model :func:`serve` wrote, parameter name -> array."""
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


# ----------------------------------------------------------------------------------------------
# Flower's simulation runtime
# ----------------------------------------------------------------------------------------------


def simulate(
    config: FederatedConfig,
    *,
    data_root: str | Path,
    n_sites: int,
    server_app: Callable[[Mapping[str, Any]], ServerApp] = lambda run: make_server_app(run=run),
    backend_config: Mapping[str, Any] | None = None,
    **app: Any,
) -> dict[str, np.ndarray]:
    """Run the apps on Flower's simulation runtime (Ray: ``pip install 'flwr[simulation]'``):
    ``n_sites`` hospitals splitting ``<data_root>/<dataset>.npz`` as
    :func:`~privkit.federated.sites.split_sites` does (names ``site1`` ...), so that in research
    mode (``randomness="seeded"``) the model equals
    :func:`~privkit.federated.algorithms.train_federated`'s on the same sites.

    Args:
        config: the run.
        data_root: the folder with the dataset's file.
        n_sites: the number of simulated hospitals (SuperNodes).
        server_app: builds the coordinator's ServerApp from the run configuration.
        backend_config: Flower's Ray backend settings (default: one CPU per hospital).
        app: the app's keys (:class:`~privkit.federated.deployment.AppConfig`, e.g.
            ``partition_scheme="label_skew"``).

    Returns:
        The final model, parameter name -> array.
    """
    from flwr.simulation import run_simulation

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "global.npz"
        run = run_config(config, n_sites=n_sites, out=str(out), **app)
        run_simulation(
            server_app=server_app(run),
            client_app=make_client_app(run=run, node={"data-root": str(data_root)}),
            num_supernodes=n_sites,
            backend_config=dict(backend_config or {"client_resources": {"num_cpus": 1}}),
        )
        if not out.is_file():
            raise RuntimeError(
                "The simulated ServerApp ended without a model; see Flower's log above."
            )
        return load_weights(out)
