"""Sweeps of training runs as units of work: stacks of models from plain configs.

A sweep's unit is one stack of models that ``train.train_many`` trains together, described by
plain configs and the data they read (:func:`train_stack`, ``trust.score_stack``): a pure
function of its configs and the data, which reads no ledger and writes no file, so that an
executor (``privkit.executors``) may run it here or on a Ray cluster. :func:`sweep` is the
driver every stacked sweep shares: it gives each config its run id (``results.run_id``), leaves
out the runs already in the results table, groups the rest into stacks (:func:`stack_groups`),
charges the ledger before a stack leaves (:func:`charge_stack`) and writes each stack's runs
through ``results.Store`` as it comes back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from privkit import budget, data, executors, results
from privkit.train import TrainConfig, charge_runs, plan, resolve_device, stack_key, train_many

Run = tuple[str, TrainConfig, data.Dataset]  # run id, config, its loaded data
# A stack's unit of work: (data, configs, run ids, experiment, progress) -> one Output per run.
StackUnit = Callable[[data.Dataset, Sequence[TrainConfig], Sequence[str], str, bool], list]


def load_runs(configs: Sequence[TrainConfig], *, device: str | None = None) -> list[Run]:
    """Each config with its run id and its data, every dataset loaded once per device: on
    ``device`` (an executor's, which ships the data elsewhere), else on each config's own.

    Raises:
        ValueError: a config that cannot run on its data (``TrainConfig.check_against``), before
            anything is trained.
    """
    datasets: dict[tuple, data.Dataset] = {}
    runs: list[Run] = []
    for config in configs:
        where = resolve_device(device or config.device)
        key = (config.dataset, config.data_root, str(where))
        if key not in datasets:
            datasets[key] = data.load(config.dataset, root=config.data_root, device=where)
        config.check_against(len(datasets[key].train))
        runs.append((results.run_id(config, datasets[key].sha256), config, datasets[key]))
    return runs


def on_gpu(config: TrainConfig, gpus: bool | None = None) -> bool:
    """Whether ``config`` trains on a GPU where it runs: ``gpus`` says if GPUs are there (an
    executor's cluster; None: this machine). ``device="cpu"`` never does, ``"cuda"`` always."""
    if config.device != "auto" or gpus is None:
        return resolve_device(config.device).type == "cuda"
    return gpus


def stack_groups(
    runs: Sequence[Run],
    *,
    done: set[str],
    max_stack: int | None,
    gpus: bool | None = None,
    gpu_stack: int | None = None,
) -> list[list[Run]]:
    """The runs not in ``done``, grouped into stacks that ``train_many`` trains together.

    Up to ``max_stack`` models per stack; by default ``gpu_stack`` (None: all of them) on a GPU
    and one at a time on a CPU (see :func:`sweep`), with ``gpus`` as in :func:`on_gpu`; backends
    other than ``fast`` train one at a time.
    """
    groups: list[list[Run]] = []
    open_groups: dict[tuple, list] = {}
    for run in runs:
        if run[0] in done:
            continue
        config = run[1]
        limit = (
            1
            if config.backend != "fast"
            else max_stack or ((gpu_stack or len(runs)) if on_gpu(config, gpus) else 1)
        )
        group = open_groups.get(stack_key(config))
        if group is None or len(group) >= limit:
            group = open_groups[stack_key(config)] = []
            groups.append(group)
        group.append(run)
    return groups


def charge_stack(
    ledger: budget.Ledger,
    configs: Sequence[TrainConfig],
    *,
    n_train: int,
    runs: Sequence[str],
    allow_seeded: bool = False,
) -> list[budget.Spend]:
    """Charge a stack's runs to ``ledger`` before the driver dispatches it, each under its run id:
    the mechanism ``train_many`` would charge before reading data (``train.charge_runs``).

    Raises:
        budget.BudgetExceededError: a run over budget; the runs before it stay charged.
    """
    return charge_runs(
        ledger,
        configs,
        [plan(c, n_train) for c in configs],
        run_ids=runs,
        allow_seeded=allow_seeded,
    )


def train_stack(
    dataset: data.Dataset,
    configs: Sequence[TrainConfig],
    runs: Sequence[str],
    experiment: str,
    progress: bool = False,
) -> list[results.Output]:
    """The privacy-utility sweep's unit of work: one stack of models from plain configs and
    their data, trained where it runs (the configs' device resolved there), nothing charged,
    nothing written. Per run, its ``metrics`` rows (``results.result_rows``) and its record
    (``results.run_record``)."""
    trained = train_many(
        configs, dataset=dataset.to(resolve_device(configs[0].device)), progress=progress
    )
    return [
        results.Output(
            run,
            {"metrics": results.result_rows(r, experiment=experiment, run=run)},
            results.run_record(r, data_sha256=dataset.sha256, trained_together_with=len(configs)),
        )
        for run, r in zip(runs, trained)
    ]


def sweep(
    configs: Sequence[TrainConfig],
    *,
    unit: StackUnit,
    table: results.Table,
    experiment: str,
    max_stack: int | None = None,
    ledger: budget.Ledger | None = None,
    allow_seeded: bool = False,
    executor: str | executors.Executor | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Train every config whose run is not in ``table`` with ``unit``; return their rows.

    The store is ``table``'s folder (``results.Store``): each stack's runs get their
    ``runs/<run_id>.json`` there, then their rows in ``table``. Arguments as
    ``privkit.experiments.sweep``'s.
    """
    store = results.Store(Path(table.path).parent)
    runner = executors.resolve(executor)
    runs = load_runs(configs, device=runner.data_device)
    groups = stack_groups(
        runs,
        done=table.run_ids(),
        max_stack=max_stack,
        gpus=runner.has_gpus(),
        gpu_stack=runner.gpu_stack(),
    )
    units = [
        executors.Unit(
            name=f"{experiment}: " + ", ".join(f"{run} ({_label(c)})" for run, c, _ in group),
            fn=unit,
            data=group[0][2],
            args=(
                [c for _, c, _ in group],
                [run for run, _, _ in group],
                experiment,
                progress and runner.inner_progress,
            ),
            models=len(group),
            gpu=group[0][1].device != "cpu",
        )
        for group in groups
    ]

    def charge(u: executors.Unit) -> dict[str, budget.Spend]:
        configs, ids = u.args[0], u.args[1]
        spends = charge_stack(
            ledger, configs, n_train=len(u.data.train), runs=ids, allow_seeded=allow_seeded
        )
        return dict(zip(ids, spends))

    store.run(
        units,
        [table],
        executor=runner,
        charge=charge if ledger else None,
        desc=experiment,
        progress=progress,
    )
    rows = table.read()
    return rows[rows["run_id"].isin([r[0] for r in runs])].reset_index(drop=True)


def _label(config: TrainConfig) -> str:
    privacy = (
        f"ε={config.epsilon:g}" if config.epsilon is not None else f"σ={config.noise_multiplier:g}"
    )
    return f"{config.model}, {privacy}, seed {config.seed}"
