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

import ast
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from privkit import budget, executors, recipes, results, stacks
from privkit.train import TrainConfig

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
    (``privkit.stacks.train_stack``) run by ``executor`` (``privkit.executors``: ``"local"``, the default
    unless ``$PRIVKIT_EXECUTOR`` says otherwise, or ``"ray"``/``"ray:<address>"``).
    With a ``ledger``, this process charges each stack before dispatching it
    (``stacks.charge_stack``); runs reused from the table spend nothing; ``allow_seeded`` lets it
    charge ``randomness="seeded"`` runs (see :func:`privkit.train.train_many`). This process
    alone writes, through ``privkit.results.Store``: as each stack comes back,
    ``runs/<run_id>.json`` with its provenance, where it ran and its ledger anchor, then its
    rows, appended atomically. So an interrupted sweep resumes and a repeated
    one trains nothing; a stack that fails for good raises ``executors.UnitsFailedError`` once
    every other stack is written.
    """
    table = results.Store(out_dir).table("metrics", results.COLUMNS)
    return stacks.sweep(
        configs,
        unit=stacks.train_stack,
        table=table,
        experiment=experiment,
        max_stack=max_stack,
        ledger=ledger,
        allow_seeded=allow_seeded,
        executor=executor,
        progress=progress,
    )


def time_sweep(
    experiment: str | Path,
    *,
    device: str = "auto",
    data_root: str | None = None,
    profile: str = "full",
    progress: bool = True,
) -> dict:
    """Wall time of an experiment's epsilon sweep (as its notebook runs it), compilation
    included, into a temporary folder so that no cached run is reused (``privkit bench
    --sweep``)."""
    import tempfile

    exp = load_experiment(
        experiment, profile=profile, notebooks_dir=Path(experiment).parent.parent / "notebooks"
    )
    defaults = notebook_parameters(exp.notebook)
    p = {k: ast.literal_eval(v["default"]) for k, v in defaults.items()} | exp.parameters
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    shared = (
        {k: v for k, v in p.items() if k in fields}
        | p["overrides"]
        | {"device": device, "data_root": data_root}
    )
    configs = recipes.sweep_recipes(p["recipes"], p["epsilons"], p["seeds"], **shared)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        sweep(configs, experiment="bench", out_dir=out, progress=progress)
    return {
        "experiment": str(experiment),
        "profile": profile,
        "models": len(configs),
        "epochs": sorted({c.epochs for c in configs}),
        "seconds": time.perf_counter() - start,
    }


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
