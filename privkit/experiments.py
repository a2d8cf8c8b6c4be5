"""Run, cache and record experiments: sweeps of training runs and parameterised notebooks.

An experiment is a notebook plus ``experiments/<name>.yaml``, which overrides the notebook's
parameters (the ``full`` profile) and may define lighter profiles (``quick`` for CPUs)::

    notebook: privacy_utility.ipynb
    parameters: {epochs: 30, seeds: [0, 1, 2]}
    profiles:
      quick: {epochs: 5, seeds: [0]}

``reproduce`` executes every experiment's notebook with papermill into
``results/<name>/<name>-<profile>.ipynb`` and copies its figures to ``figures/``, skipping
notebooks whose inputs (notebook, parameters, privkit's code) have not changed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from privkit import budget, data, executors, results
from privkit.train import TrainConfig, charge_runs, plan, resolve_device, stack_key, train_many

PROFILES = ("full", "quick")
_YAML_KEYS = {"notebook", "description", "parameters", "profiles"}


def epsilon_sweep(
    base: TrainConfig, *, epsilons: Iterable[float], seeds: Iterable[int], nonprivate: bool = True
) -> list[TrainConfig]:
    """One config per (epsilon, seed), plus a non-private baseline per seed.

    >>> configs = epsilon_sweep(TrainConfig(), epsilons=[1, 8], seeds=[0, 1])
    >>> sorted({c.epsilon for c in configs})
    [1, 8, inf]
    """
    eps = list(epsilons) + ([math.inf] if nonprivate else [])
    return [replace(base, epsilon=e, noise_multiplier=None, seed=s) for e in eps for s in seeds]


Run = tuple[str, TrainConfig, data.Dataset]  # run id, config, its loaded data


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
) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
    """A sweep's unit of work: one stack of models from plain configs and their data, trained
    where it runs (the configs' device resolved there), nothing charged, nothing written.

    Returns:
        Per run, its rows (``results.result_rows``) and its record (``results.run_record``).
    """
    trained = train_many(
        configs, dataset=dataset.to(resolve_device(configs[0].device)), progress=progress
    )
    return [
        (
            results.result_rows(r, experiment=experiment, run=run),
            results.run_record(r, data_sha256=dataset.sha256, trained_together_with=len(configs)),
        )
        for run, r in zip(runs, trained)
    ]


def run_stacks(
    groups: Sequence[Sequence[Run]],
    unit: Callable[..., Any],
    *,
    args: tuple,
    on_finished: Callable[[executors.Finished], None],
    executor: executors.Executor,
    experiment: str,
    ledger: budget.Ledger | None,
    allow_seeded: bool,
    progress: bool,
    spends: dict[str, budget.Spend] | None = None,
) -> None:
    """Run each group as ``unit(dataset, configs, run_ids, *args)`` on ``executor``; the driver
    charges ``ledger`` before a group leaves (:func:`charge_stack`), recording each run's spend
    in ``spends`` (so that ``on_finished`` can anchor the ledger in its provenance), and
    ``on_finished`` writes it."""
    spends = {} if spends is None else spends
    units = [
        executors.Unit(
            name=f"{experiment}: " + ", ".join(f"{run} ({_label(c)})" for run, c, _ in group),
            fn=unit,
            data=group[0][2],
            args=([c for _, c, _ in group], [run for run, _, _ in group], *args),
            models=len(group),
            gpu=group[0][1].device != "cpu",
        )
        for group in groups
    ]

    def charge(u: executors.Unit) -> None:
        charged = charge_stack(
            ledger, u.args[0], n_train=len(u.data.train), runs=u.args[1], allow_seeded=allow_seeded
        )
        spends.update(zip(u.args[1], charged))

    executors.run(
        units,
        executor=executor,
        on_finished=on_finished,
        before_dispatch=charge if ledger else None,
        desc=experiment,
        progress=progress,
    )


def _label(config: TrainConfig) -> str:
    privacy = (
        f"ε={config.epsilon:g}" if config.epsilon is not None else f"σ={config.noise_multiplier:g}"
    )
    return f"{config.model}, {privacy}, seed {config.seed}"


def sweep(
    configs: Sequence[TrainConfig],
    *,
    experiment: str,
    out_dir: str | Path,
    max_stack: int | None = None,
    ledger: budget.Ledger | None = None,
    allow_seeded: bool = False,
    executor: str | executors.Executor | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Train every config not already finished in ``<out_dir>/metrics.csv``; return their rows.

    Configs that can share a stack (``backend='fast'``, same ``train.STACK_FIELDS``) train
    together, up to ``max_stack`` models at once. By default a GPU takes them all (on a
    cluster, ``models_per_gpu`` of the Ray executor), and a CPU one at a time: there, vmapped
    convolutions over stacked models run slower per model than single ones (measured on a
    2-core CPU: 1.5 s vs 0.8 s per model and epoch). Each stack is a unit of work
    (:func:`train_stack`) run by ``executor`` (``privkit.executors``: ``"local"``, the default
    unless ``$PRIVKIT_EXECUTOR`` says otherwise, or ``"ray"``/``"ray:<address>"``).
    With a ``ledger``, this process charges each stack before dispatching it
    (:func:`charge_stack`); runs reused from the table spend nothing; ``allow_seeded`` lets it
    charge ``randomness="seeded"`` runs (see :func:`privkit.train.train_many`). This process
    alone writes: as each stack comes back, ``runs/<run_id>.json`` with its provenance and where
    it ran, then its rows, appended atomically. So an interrupted sweep resumes and a repeated
    one trains nothing; a stack that fails for good raises ``executors.UnitsFailedError`` once
    every other stack is written.
    """
    out_dir = Path(out_dir)
    table_path = out_dir / "metrics.csv"
    runner = executors.resolve(executor)
    runs = load_runs(configs, device=runner.data_device)
    done = set(results.read_table(table_path)["run_id"])
    groups = stack_groups(
        runs, done=done, max_stack=max_stack, gpus=runner.has_gpus(), gpu_stack=runner.gpu_stack()
    )

    def write(finished: executors.Finished) -> None:
        rows = []
        for run, (run_rows, record) in zip(finished.unit.args[1], finished.value):
            anchor = results.ledger_entry(spends.get(run))
            results.write_provenance(out_dir, run, record | {"where": finished.where} | anchor)
            rows += run_rows
        results.append_rows(table_path, rows)

    spends: dict[str, budget.Spend] = {}
    run_stacks(
        groups,
        train_stack,
        args=(experiment, progress and runner.inner_progress),
        on_finished=write,
        executor=runner,
        experiment=experiment,
        ledger=ledger,
        allow_seeded=allow_seeded,
        progress=progress,
        spends=spends,
    )
    table = results.read_table(table_path)
    return table[table["run_id"].isin([r[0] for r in runs])].reset_index(drop=True)


@dataclass(frozen=True)
class Experiment:
    name: str
    notebook: Path
    parameters: dict[str, Any]  # the profile's values, overriding the notebook's defaults


def notebook_parameters(notebook: str | Path) -> dict[str, dict[str, Any]]:
    """The parameters cell of a notebook, as papermill reads it: name -> {default, help, ...}."""
    import papermill

    return papermill.inspect_notebook(str(notebook))


def load_experiment(
    path: str | Path, *, profile: str = "full", notebooks_dir: str | Path = "notebooks"
) -> Experiment:
    """Read ``experiments/<name>.yaml`` and resolve a profile; every key is checked.

    Raises:
        ValueError: an unknown top-level key, profile, or a parameter the notebook lacks.
    """
    path = Path(path)
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(spec) - _YAML_KEYS)
    if unknown:
        raise ValueError(
            f"{path}: unknown key(s) {unknown}; expected some of {sorted(_YAML_KEYS)}."
        )
    if "notebook" not in spec:
        raise ValueError(f"{path}: missing key 'notebook' (the notebook this experiment runs).")
    profiles = spec.get("profiles") or {}
    if profile != "full" and profile not in profiles:
        raise ValueError(
            f"{path}: unknown profile={profile!r}; expected one of: full, {', '.join(profiles)}."
        )
    notebook = Path(notebooks_dir) / spec["notebook"]
    known = notebook_parameters(notebook)
    params = dict(spec.get("parameters") or {})
    if profile != "full":
        params.update(profiles[profile] or {})
    for where, values in [("parameters", spec.get("parameters") or {})] + [
        (f"profiles.{p}", v or {}) for p, v in profiles.items()
    ]:
        bad = sorted(set(values) - set(known))
        if bad:
            raise ValueError(
                f"{path}: {where} has unknown parameter(s) {bad}; the parameters of "
                f"{notebook} are: {', '.join(known)}."
            )
    return Experiment(name=path.stem, notebook=notebook, parameters=params)


def kernel_name() -> str:
    """The Jupyter kernel ``make`` registers (``privkit``), else the current interpreter's."""
    from jupyter_client.kernelspec import KernelSpecManager

    return "privkit" if "privkit" in KernelSpecManager().find_kernel_specs() else "python3"


def run_notebook(
    notebook: str | Path, output: str | Path, parameters: dict[str, Any], *, progress: bool = True
) -> Path:
    """Execute ``notebook`` with papermill into ``output``, written only once it succeeded.

    A failing notebook is kept as ``<output>.failed.ipynb`` with its error, and re-raised.
    """
    import papermill

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.stem}.running.ipynb")
    try:
        papermill.execute_notebook(
            str(notebook),
            str(partial),
            parameters=parameters,
            kernel_name=kernel_name(),
            progress_bar=progress,
            cwd=str(Path.cwd()),
        )
    except Exception:
        if partial.exists():  # keep the executed cells, with the error, for reading
            partial.replace(output.with_name(f"{output.stem}.failed.ipynb"))
        raise
    partial.replace(output)
    output.with_name(f"{output.stem}.failed.ipynb").unlink(missing_ok=True)
    return output


def _stamp(experiment: Experiment) -> str:
    """Hash of what an executed notebook depends on: notebook, parameters, privkit's code."""
    h = hashlib.sha256(experiment.notebook.read_bytes())
    h.update(json.dumps(experiment.parameters, sort_keys=True, default=str).encode())
    for source in sorted(Path(__file__).parent.rglob("*.py")):
        h.update(source.read_bytes())
    return h.hexdigest()


def run_if_stale(
    experiment: Experiment, output: Path, *, force: bool = False, label: str = ""
) -> bool:
    """Execute ``experiment`` into ``output`` (:func:`run_notebook`) unless an executed copy of
    the same inputs (notebook, parameters, privkit's code) is there; True if it ran."""
    label = label or experiment.name
    stamp_file = output.with_name(f".{output.stem}.stamp")
    stamp = _stamp(experiment)
    if not force and output.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        print(f"{label}: up to date, {output}")
        return False
    print(f"{label}: running {experiment.notebook} -> {output}")
    run_notebook(experiment.notebook, output, experiment.parameters)
    stamp_file.write_text(stamp)
    return True


def reproduce(
    *,
    profile: str = "full",
    experiments_dir: str | Path = "experiments",
    notebooks_dir: str | Path = "notebooks",
    results_dir: str | Path = "results",
    figures_dir: str | Path = "figures",
    force: bool = False,
    executor: str | None = None,
) -> list[Path]:
    """Execute every stale experiment notebook; copy its figures to ``figures_dir``.

    Each notebook receives ``out_dir = <results_dir>/<name>`` and writes its table and
    ``figures/`` there; with ``executor`` (``"ray"``, ``"ray:<address>"``: see
    ``privkit.executors``) its sweeps run there, through ``$PRIVKIT_EXECUTOR`` in the kernel's
    environment. The executor is not part of a notebook's inputs: it changes where runs
    train, not what they are. Returns the executed notebooks.
    """
    specs = sorted(Path(experiments_dir).glob("*.yaml"))
    if not specs:
        raise FileNotFoundError(f"No experiments (*.yaml) in {Path(experiments_dir).resolve()}.")
    experiments = [load_experiment(p, profile=profile, notebooks_dir=notebooks_dir) for p in specs]
    if executor is None:
        return _reproduce(experiments, profile, results_dir, figures_dir, force)
    executors.resolve(executor)  # a bad name fails here, not in the first notebook
    before = os.environ.get(executors.ENV)
    os.environ[executors.ENV] = executor
    try:
        return _reproduce(experiments, profile, results_dir, figures_dir, force)
    finally:
        if before is None:
            del os.environ[executors.ENV]
        else:
            os.environ[executors.ENV] = before


def _reproduce(
    experiments: list[Experiment],
    profile: str,
    results_dir: str | Path,
    figures_dir: str | Path,
    force: bool,
) -> list[Path]:
    executed = []
    for exp in experiments:
        out_dir = Path(results_dir) / exp.name
        params = {**exp.parameters, "out_dir": str(out_dir)}
        exp = replace(exp, parameters=params)
        output = out_dir / f"{exp.name}-{profile}.ipynb"
        run_if_stale(exp, output, force=force, label=f"{exp.name} ({profile})")
        for figure in sorted((out_dir / "figures").glob("*")):
            Path(figures_dir).mkdir(parents=True, exist_ok=True)
            shutil.copy2(figure, Path(figures_dir) / figure.name)
        executed.append(output)
    return executed
