"""The same FedAvg, with each site's DP-SGD, on Flower (Beutel et al. 2020): real processes,
real network, for deployments. Optional extra: ``pip install 'privkit[flower]'``.

Flower's server sends the global weights to each hospital's client; the client trains them
on its own records with privkit's local DP-SGD (:func:`privkit.federated.local.local_training`)
and returns the new weights, with its record count under ``weighting="records"`` (else 1;
see :mod:`privkit.federated.algorithms`, "What leaves a hospital"), and nothing else: no
loss, no metric; the server averages them (weighted by those counts) and applies the average with ``server_lr`` and ``server_momentum``, exactly as
:func:`privkit.federated.algorithms.train_federated` with ``algorithm='fedavg'``. This uses
Flower's gRPC ``start_server`` / ``start_client`` (deprecated in Flower 1.x in favour of
SuperLink/SuperNode deployments, still supported in 1.42; the client and strategy here are
the same objects a ``ClientApp`` / ``ServerApp`` would wrap). Site-level DP and secure
aggregation are not offered on this path: Flower brings its own (its ``DifferentialPrivacy*``
strategy wrappers and SecAgg+ mods).

**How a hospital runs its client.** Put the hospital's own training records in MedMNIST's
npz format (``train_images`` uint8 (n, 28, 28), ``train_labels`` (n, 1); the val and test
arrays may be tiny placeholders) as ``<folder>/pneumoniamnist.npz``, agree with the
coordinator on the run's configuration (the same ``--config`` JSON the server gets), and run::

    python -m privkit.federated.flower client --server coordinator.example.org:8080 \\
        --data-root <folder> --name hospital-a --n-sites 1 --site-index 0 \\
        --config '{"rounds": 10, "epsilon": 8.0}' --ledger <folder>/ledger.sqlite

The client charges the hospital's own ledger (scope ``dataset:pneumoniamnist/institution:<name>``)
for its whole DP-SGD mechanism before it reads a record, and refuses to start when that
exceeds the hospital's budget. Its Poisson draws and noise come from the OS's entropy, so the
coordinator, who knows the configuration, cannot replay its training; a configuration with
``"randomness": "seeded"`` (repeatable research on public data) must be accepted by the
hospital with ``--allow-seeded`` when it charges a ledger. The coordinator runs::

    python -m privkit.federated.flower server --port 8080 --n-sites 3 \\
        --config '{"rounds": 10, "epsilon": 8.0}' --out global.npz

(``--n-sites``/``--site-index`` with more than one site split the file as the simulation
does, for tests. Use TLS certificates for anything beyond a trusted network.)
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from privkit import budget, data
from privkit._io import atomic_write
from privkit import randomness
from privkit.federated.algorithms import FederatedConfig, site_generator, stream_identity
from privkit.federated.local import local_training, plan_site
from privkit.federated.sites import Site, split_sites
from privkit.models import create_model

try:
    import flwr
    from flwr.client import NumPyClient
    from flwr.common import FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.client_proxy import ClientProxy
    from flwr.server.strategy import FedAvg
except ImportError as error:  # pragma: no cover - the optional extra is missing
    raise ImportError("privkit.federated.flower needs Flower: pip install 'privkit[flower]'.") from error


def initial_weights(config: FederatedConfig, *, in_channels: int = 1, n_outputs: int = 1) -> list[np.ndarray]:
    """The global model's first weights, as the simulation draws them (seeded by ``config.seed``)."""
    torch.manual_seed(config.seed)
    model = create_model(config.model, in_channels=in_channels, n_outputs=n_outputs)
    return [v.detach().cpu().numpy() for v in model.parameters()]


class SiteClient(NumPyClient):
    """A hospital's Flower client: local DP-SGD on its own records, weights in and out.

    Args:
        site: the hospital's records.
        config: the run's configuration (rounds, local epochs, batch, lr, its epsilon).
        ledger: the hospital's ledger, charged here for the whole run, before any record is read.
        dataset_name: the ledger's dataset name.
        allow_seeded: let the ledger charge a ``randomness="seeded"`` configuration.
    """

    def __init__(self, site: Site, config: FederatedConfig, *, ledger: budget.Ledger | None = None,
                 dataset_name: str = "pneumoniamnist", allow_seeded: bool = False) -> None:  # fmt: skip
        self.site, self.config = site, config
        self.plan = plan_site(site.name, len(site), epsilon=config.site_epsilon(site.name), delta=config.delta,
                              batch_size=config.batch_size, local_epochs=config.local_epochs, rounds=config.rounds,
                              max_grad_norm=config.max_grad_norm, accountant=config.accountant)  # fmt: skip
        if ledger is not None:  # refused -> BudgetExceededError, and the client never starts
            ledger.charge([f"dataset:{dataset_name}/institution:{site.name}"],
                          noise_multiplier=self.plan.noise_multiplier, sample_rate=self.plan.sample_rate,
                          steps=self.plan.steps, delta=self.plan.delta, run_id=f"flower-{site.name}",
                          actor=budget.default_actor(), accountant=config.accountant,
                          randomness=randomness.ledger_tag(randomness=config.randomness,
                                                           identity=stream_identity(config, f"site:{site.name}")),
                          allow_seeded=allow_seeded)  # fmt: skip
        self.model = create_model(config.model, in_channels=site.train.images.shape[1],
                                  n_outputs=site.train.labels.shape[1])  # fmt: skip
        self.names = [k for k, _ in self.model.named_parameters()]
        self.generator = site_generator(config, site.name)
        self.rounds_done = 0

    def fit(self, parameters: list[np.ndarray], config: dict[str, Scalar]) -> tuple[list[np.ndarray], int, dict]:
        if self.rounds_done >= self.config.rounds:  # the ledger was charged for this many
            raise RuntimeError(f"Site {self.site.name} was charged for {self.config.rounds} rounds; refusing more.")
        params = {k: torch.as_tensor(v) for k, v in zip(self.names, parameters)}
        new, _, _ = local_training(self.model, params, self.site, self.plan, lr=self.config.lr,
                                   momentum=self.config.momentum, generator=self.generator)  # fmt: skip
        self.rounds_done += 1  # the loss stays here: it is not covered by the accounted mechanism
        count = len(self.site) if self.config.weighting == "records" else 1
        return [new[k].numpy() for k in self.names], count, {}


class ServerFedAvg(FedAvg):
    """Flower's FedAvg (record-count weighted mean), applied with privkit's ``server_lr`` and
    ``server_momentum`` (FedAvgM, Hsu, Qi & Brown 2019), as in the simulation."""

    def __init__(self, config: FederatedConfig, initial: list[np.ndarray], n_sites: int) -> None:
        super().__init__(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n_sites,
                         min_available_clients=n_sites, min_evaluate_clients=0,
                         initial_parameters=ndarrays_to_parameters(initial), accept_failures=False)  # fmt: skip
        self.config, self.current, self.velocity = config, [w.copy() for w in initial], None

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: Sequence) -> tuple[Parameters | None, dict[str, Scalar]]:  # fmt: skip
        if failures:
            raise RuntimeError(f"Round {server_round}: {len(failures)} site(s) failed; no partial average.")
        total = sum(r.num_examples for _, r in results)
        trained = [parameters_to_ndarrays(r.parameters) for _, r in results]
        average = [sum(r.num_examples / total * (w[i].astype(np.float64) - self.current[i])
                       for (_, r), w in zip(results, trained)) for i in range(len(self.current))]  # fmt: skip
        m = self.config.server_momentum
        self.velocity = average if self.velocity is None else [m * v + a for v, a in zip(self.velocity, average)]
        self.current = [(c + self.config.server_lr * v).astype(np.float32) for c, v in zip(self.current, self.velocity)]
        return ndarrays_to_parameters(self.current), {}


def run_server(config: FederatedConfig, *, address: str, n_sites: int, out: str | Path) -> list[np.ndarray]:
    """Serve ``config.rounds`` FedAvg rounds to ``n_sites`` clients; write the final weights to ``out`` (npz)."""
    if config.algorithm != "fedavg" or config.site_level or config.secure_aggregation:
        raise ValueError("The Flower path runs algorithm='fedavg' with sample-level DP only; site-level DP and "
                         "secure aggregation come from Flower's own strategy wrappers and mods.")  # fmt: skip
    strategy = ServerFedAvg(config, initial_weights(config), n_sites)
    flwr.server.start_server(server_address=address, config=flwr.server.ServerConfig(num_rounds=config.rounds),
                             strategy=strategy)  # fmt: skip
    atomic_write(out, lambda tmp: np.savez(tmp.open("wb"), *strategy.current))
    return strategy.current


def load_weights(path: str | Path) -> list[np.ndarray]:
    with np.load(path) as npz:
        return [npz[f"arr_{i}"] for i in range(len(npz.files))]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m privkit.federated.flower", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="role", required=True)
    server = sub.add_parser("server", help="the coordinator: aggregates weights, sees no records")
    server.add_argument("--port", type=int, required=True)
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--out", required=True, help="npz file for the final global weights")
    client = sub.add_parser("client", help="a hospital: trains on its own records")
    client.add_argument("--server", required=True, help="host:port of the coordinator")
    client.add_argument("--data-root", required=True, help="folder with the hospital's <dataset>.npz")
    client.add_argument("--dataset", default="pneumoniamnist", choices=data.DATASETS)
    client.add_argument("--name", default=None, help="the site's name (default: as the simulation names it)")
    client.add_argument("--site-index", type=int, default=0)
    client.add_argument("--scheme", default="iid")
    client.add_argument("--alpha", type=float, default=0.5)
    client.add_argument("--partition-seed", type=int, default=0)
    client.add_argument("--ledger", default=None, help="the hospital's privacy ledger (SQLite)")
    client.add_argument("--allow-seeded", action="store_true",
                        help="let the ledger charge a configuration with randomness 'seeded' (public data only)")
    for p in (server, client):
        p.add_argument("--n-sites", type=int, required=True)
        p.add_argument("--config", default="{}", help="FederatedConfig fields as JSON, the same for every process")
    args = parser.parse_args(argv)
    values = json.loads(args.config)
    values = {k: math.inf if v == "inf" else v for k, v in values.items()}
    config = FederatedConfig(**values)
    if args.role == "server":
        run_server(config, address=f"{args.host}:{args.port}", n_sites=args.n_sites, out=args.out)
        return
    records = data.load(args.dataset, root=args.data_root)
    sites = split_sites(records.train, n_sites=args.n_sites, scheme=args.scheme, alpha=args.alpha,
                        seed=args.partition_seed)  # fmt: skip
    site = sites[args.site_index] if args.name is None else Site(args.name, sites[args.site_index].train)
    ledger = budget.Ledger(args.ledger) if args.ledger else None
    client = SiteClient(site, config, ledger=ledger, dataset_name=args.dataset, allow_seeded=args.allow_seeded)
    flwr.client.start_client(server_address=args.server, client=client.to_client(), insecure=True, max_wait_time=60)


if __name__ == "__main__":
    main()
