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
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from tqdm.auto import tqdm

from privkit import budget, data, results
from privkit.train import TrainConfig, resolve_device, stack_key, train_many

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


def load_runs(configs: Sequence[TrainConfig]) -> list[Run]:
    """Each config with its run id and its data, every dataset loaded once per device."""
    datasets: dict[tuple, data.Dataset] = {}
    runs: list[Run] = []
    for config in configs:
        device = resolve_device(config.device)
        key = (config.dataset, config.data_root, str(device))
        if key not in datasets:
            datasets[key] = data.load(config.dataset, root=config.data_root, device=device)
        runs.append((results.run_id(config, datasets[key].sha256), config, datasets[key]))
    return runs


def stack_groups(runs: Sequence[Run], *, done: set[str], max_stack: int | None) -> list[list[Run]]:
    """The runs not in ``done``, grouped into stacks that ``train_many`` trains together.

    Up to ``max_stack`` models per stack; by default all of them on a GPU and one at a time on
    a CPU (see :func:`sweep`); backends other than ``fast`` train one at a time.
    """
    groups: list[list[Run]] = []
    open_groups: dict[tuple, list] = {}
    for run in runs:
        if run[0] in done:
            continue
        config = run[1]
        limit = 1 if config.backend != "fast" else max_stack or (
            len(runs) if resolve_device(config.device).type == "cuda" else 1
        )
        group = open_groups.get(stack_key(config))
        if group is None or len(group) >= limit:
            group = open_groups[stack_key(config)] = []
            groups.append(group)
        group.append(run)
    return groups


def sweep(
    configs: Sequence[TrainConfig],
    *,
    experiment: str,
    out_dir: str | Path,
    max_stack: int | None = None,
    ledger: budget.Ledger | None = None,
    allow_seeded: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Train every config not already finished in ``<out_dir>/metrics.csv``; return their rows.

    Configs that can share a stack (``backend='fast'``, same ``train.STACK_FIELDS``) train
    together, up to ``max_stack`` models at once. By default a GPU takes them all, and a CPU
    one at a time: there, vmapped convolutions over stacked models run slower per model than
    single ones (measured on a 2-core CPU: 1.5 s vs 0.8 s per model and epoch).
    With a ``ledger``, each group is charged before it trains; runs reused from the table
    spend nothing; ``allow_seeded`` lets it charge ``randomness="seeded"`` runs (see
    :func:`privkit.train.train_many`). Each finished group appends its rows atomically and writes
    ``runs/<run_id>.json`` with its provenance, so an interrupted sweep resumes and a repeated
    one trains nothing.
    """
    out_dir = Path(out_dir)
    table_path = out_dir / "metrics.csv"
    runs = load_runs(configs)
    groups = stack_groups(runs, done=set(results.read_table(table_path)["run_id"]), max_stack=max_stack)
    for group in tqdm(groups, desc=experiment, disable=not progress):
        trained = train_many(
            [c for _, c, _ in group], dataset=group[0][2], ledger=ledger, allow_seeded=allow_seeded, progress=progress
        )
        rows = []
        for (run, _, dataset), result in zip(group, trained):
            results.write_run_record(out_dir, run, result, data_sha256=dataset.sha256, trained_together_with=len(group))
            rows += results.result_rows(result, experiment=experiment, run=run)
        results.append_rows(table_path, rows)
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


def load_experiment(path: str | Path, *, profile: str = "full", notebooks_dir: str | Path = "notebooks") -> Experiment:
    """Read ``experiments/<name>.yaml`` and resolve a profile; every key is checked.

    Raises:
        ValueError: an unknown top-level key, profile, or a parameter the notebook lacks.
    """
    path = Path(path)
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(spec) - _YAML_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; expected some of {sorted(_YAML_KEYS)}.")
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


def run_notebook(notebook: str | Path, output: str | Path, parameters: dict[str, Any], *, progress: bool = True) -> Path:
    """Execute ``notebook`` with papermill into ``output``, written only once it succeeded.

    A failing notebook is kept as ``<output>.failed.ipynb`` with its error, and re-raised.
    """
    import papermill

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.stem}.running.ipynb")
    try:
        papermill.execute_notebook(
            str(notebook), str(partial), parameters=parameters, kernel_name=kernel_name(),
            progress_bar=progress, cwd=str(Path.cwd()),
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


def run_if_stale(experiment: Experiment, output: Path, *, force: bool = False, label: str = "") -> bool:
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
) -> list[Path]:
    """Execute every stale experiment notebook; copy its figures to ``figures_dir``.

    Each notebook receives ``out_dir = <results_dir>/<name>`` and writes its table and
    ``figures/`` there. Returns the executed notebooks.
    """
    specs = sorted(Path(experiments_dir).glob("*.yaml"))
    if not specs:
        raise FileNotFoundError(f"No experiments (*.yaml) in {Path(experiments_dir).resolve()}.")
    experiments = [load_experiment(p, profile=profile, notebooks_dir=notebooks_dir) for p in specs]
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
