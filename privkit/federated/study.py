"""Centralised DP against FedAvg + DP and cyclic + DP: one tidy table, finished runs reused.

Every (method, partition, number of sites, epsilon, seed) is one run. Centralised runs train
on the pooled records with :func:`privkit.train.train` (partition ``"pooled"``, one site);
federated runs split the same records with :func:`privkit.federated.sites.split_sites` and
train with :func:`privkit.federated.algorithms.train_federated`. Rows are appended to
``<out_dir>/metrics.csv`` as each run finishes (columns :data:`COLUMNS`) and each site's
mechanism to ``<out_dir>/site_budgets.csv`` (:data:`SITE_COLUMNS`); a run whose id is in the
table is never trained again. With a ledger, every run is charged (centralised runs on
``dataset:<name>``, each site on its institution scope), so the ledger shows what the whole
study spent per site.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from privkit import _validate, budget, data, executors, results, stacks
from privkit.federated.algorithms import (
    ALGORITHMS,
    FederatedConfig,
    charge_run,
    site_batch_size,
    train_federated,
)
from privkit.federated.sites import SCHEMES, Site, split_sites
from privkit.train import TrainConfig, train

METHODS = ("centralised", *ALGORITHMS)
COLUMNS = (
    "run_id",
    "method",
    "partition",
    "n_sites",
    "seed",
    "epsilon_target",
    "epsilon_spent",
    "delta",
    "rounds",
    "split",
    "metric",
    "value",
)
SITE_COLUMNS = (
    "run_id",
    "method",
    "partition",
    "n_sites",
    "seed",
    "epsilon_target",
    "site",
    "n_records",
    "positive_fraction",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "epsilon_spent",
)


def settings(
    *,
    methods: Sequence[str],
    partitions: Sequence[str],
    site_counts: Sequence[int],
    epsilons: Sequence[float],
    seeds: Sequence[int],
) -> list[dict[str, Any]]:
    """Every run of the study; centralised runs once per (epsilon, seed), on pooled records.

    >>> len(settings(methods=["centralised", "fedavg"], partitions=["iid", "label_skew"],
    ...              site_counts=[3, 5], epsilons=[8.0, float("inf")], seeds=[0]))
    10
    """
    for m in methods:
        _validate.one_of(METHODS, method=m)
    for p in partitions:
        _validate.one_of(SCHEMES, partition=p)
    out = []
    for method, eps, seed in itertools.product(methods, epsilons, seeds):
        if method == "centralised":
            out.append(
                dict(method=method, partition="pooled", n_sites=1, epsilon=float(eps), seed=seed)
            )
        else:
            out += [
                dict(method=method, partition=p, n_sites=n, epsilon=float(eps), seed=seed)
                for p, n in itertools.product(partitions, site_counts)
            ]
    return out


def run_study(
    dataset: data.Dataset,
    runs: Sequence[dict[str, Any]],
    *,
    out_dir: str | Path,
    rounds: int = 10,
    batch_size: int = 256,
    lr: float = 0.1,
    momentum: float = 0.9,
    delta: float = 1e-5,
    alpha: float = 0.5,
    min_size: int = 10,
    ledger: budget.Ledger | None = None,
    executor: str | executors.Executor | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train every run not yet in ``<out_dir>/metrics.csv``; return the study's metric and site tables.

    Each run is a unit of work (``_train_one``) run by ``executor`` (``privkit.executors``);
    this process charges the ledger before a run is dispatched and alone writes, through
    ``privkit.results.Store``, each run's ``runs/<run_id>.json`` (provenance, where it trained,
    the ledger anchor of a centralised run) and its rows as it comes back. A run's id is
    ``results.run_id`` of its settings and the study's, with the data's checksum.

    Args:
        dataset: the loaded dataset (train split divided among sites; val and test evaluate).
        runs: from :func:`settings`.
        out_dir: where the tables go.
        rounds: federated rounds, and epochs of centralised training.
        batch_size: centralised expected batch; sites get :func:`site_batch_size` of it.
        lr, momentum: SGD, the same at every site and centrally.
        delta: delta of every (epsilon, delta) guarantee.
        alpha: Dirichlet concentration of ``label_skew`` and ``size_skew``.
        min_size: the fewest records a site may hold.
        ledger: charge every run here before it reads records.
        executor: ``"local"``, ``"ray"``, ``"ray:<address>"`` or an executor; None reads
            ``$PRIVKIT_EXECUTOR`` (default local).
        progress: a progress bar over the runs.

    Raises:
        privkit.executors.UnitsFailedError: runs that failed for good, once the others are written.
    """
    store = results.Store(out_dir)
    table, sites = study_tables(out_dir)
    study = dict(
        rounds=rounds,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        delta=delta,
        alpha=alpha,
        min_size=min_size,
    )
    ids = [results.run_id({"run": run, "study": study}, dataset.sha256) for run in runs]
    done = table.run_ids()
    runner = executors.resolve(executor)
    shipped = dataset.to(runner.data_device) if runner.data_device else dataset
    units = [
        executors.Unit(
            name=f"federated study: {rid} ({run['method']}, {run['partition']}, "
            f"{run['n_sites']} site(s), ε={run['epsilon']:g}, seed {run['seed']})",
            fn=_train_one,
            data=shipped,
            args=(run, rid, study),
            gpu=False,
        )
        for run, rid in zip(runs, ids)
        if rid not in done
    ]

    def charge(unit: executors.Unit) -> dict[str, budget.Spend]:
        run, rid, _ = unit.args
        if run["method"] == "centralised":
            config = _centralised(run, study)
            [spend] = stacks.charge_stack(ledger, [config], n_train=len(dataset.train), runs=[rid])
            return {rid: spend}
        config, sites = _federated(dataset, run, study)
        charge_run(ledger, config, sites, dataset_name=dataset.info.name)
        return {}

    store.run(
        units,
        [sites, table],  # the metrics last: a run in that table is complete
        executor=runner,
        charge=charge if ledger else None,
        desc="federated study",
        progress=progress,
    )
    metrics, site_rows = table.read(), sites.read()
    return (
        metrics[metrics["run_id"].isin(ids)].reset_index(drop=True),
        site_rows[site_rows["run_id"].isin(ids)].drop_duplicates().reset_index(drop=True),
    )


def study_tables(out_dir: str | Path) -> tuple[results.Table, results.Table]:
    """The study's ``metrics`` (:data:`COLUMNS`) and ``site_budgets`` (:data:`SITE_COLUMNS`)
    tables in the results store at ``out_dir``."""
    store = results.Store(out_dir)
    return store.table("metrics", COLUMNS), store.table("site_budgets", SITE_COLUMNS)


def _centralised(run: dict[str, Any], study: dict[str, Any]) -> TrainConfig:
    """A centralised run's config (on the pooled records)."""
    return TrainConfig(
        epsilon=run["epsilon"],
        delta=study["delta"],
        epochs=study["rounds"],
        batch_size=study["batch_size"],
        lr=study["lr"],
        momentum=study["momentum"],
        seed=run["seed"],
        device="cpu",
    )


def _federated(
    dataset: data.Dataset, run: dict[str, Any], study: dict[str, Any]
) -> tuple[FederatedConfig, list[Site]]:
    """A federated run's config and its hospitals (the partition is drawn from the run's seed)."""
    sites = split_sites(
        dataset.train,
        n_sites=run["n_sites"],
        scheme=run["partition"],
        alpha=study["alpha"],
        min_size=study["min_size"],
        seed=run["seed"],
        prefix=f"{run['partition']}-{run['n_sites']}sites-h",
    )
    config = FederatedConfig(
        algorithm=run["method"],
        rounds=study["rounds"],
        lr=study["lr"],
        momentum=study["momentum"],
        batch_size=site_batch_size(run["method"], study["batch_size"], run["n_sites"]),
        epsilon=run["epsilon"],
        delta=study["delta"],
        seed=run["seed"],
    )
    return config, sites


def _train_one(
    dataset: data.Dataset, run: dict[str, Any], rid: str, study: dict[str, Any]
) -> list[results.Output]:
    """The study's unit of work: one run from plain settings and the data, no ledger, nothing
    written. Returns its ``metrics`` rows, its ``site_budgets`` rows and its provenance."""
    key = dict(
        run_id=rid,
        method=run["method"],
        partition=run["partition"],
        n_sites=run["n_sites"],
        seed=run["seed"],
        epsilon_target=run["epsilon"],
    )
    if run["method"] == "centralised":
        config = _centralised(run, study)
        result = train(config, dataset=dataset, progress=False)
        mech = result.mechanism
        site_rows = [
            {
                **key,
                "site": "pooled",
                "n_records": len(dataset.train),
                "positive_fraction": float(dataset.train.labels.mean()),
                "noise_multiplier": mech.noise_multiplier,
                "sample_rate": mech.sample_rate,
                "steps": mech.steps,
                "epsilon_spent": mech.epsilon,
            }
        ]
        spent, metrics = mech.epsilon, result.metrics
    else:
        config, sites = _federated(dataset, run, study)
        result = train_federated(config, sites, evaluation=dataset, progress=False)
        site_rows = [
            {
                **key,
                "site": site.name,
                "n_records": len(site),
                "positive_fraction": float(site.train.labels.mean()),
                "noise_multiplier": p.mechanism.noise_multiplier,
                "sample_rate": p.mechanism.sample_rate,
                "steps": p.mechanism.steps,
                "epsilon_spent": p.mechanism.epsilon,
            }
            for site, p in zip(sites, result.sites)
        ]
        spent, metrics = result.epsilon, result.metrics
    common = {**key, "epsilon_spent": spent, "delta": study["delta"], "rounds": study["rounds"]}
    rows = [
        {**common, "split": split, "metric": m, "value": v}
        for split, values in metrics.items()
        for m, v in values.items()
    ]
    record = results.provenance(
        {"run": run, "study": study}, data_sha256=dataset.sha256, device="cpu"
    )
    record |= {"config": results.plain(config), "seconds": result.seconds}
    return [results.Output(rid, {"metrics": rows, "site_budgets": site_rows}, record)]
