"""Tidy long results tables with provenance, written atomically, reused when finished.

One row per (run, split, metric), the shape seaborn and pandas read directly. A run's rows are
appended only after it finished, so the table itself records which runs are done: an
interrupted sweep resumes where it stopped, and a finished run is never trained twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from privkit._io import atomic_write, atomic_write_text, locked
from privkit.budget import Spend
from privkit.train import TrainConfig, TrainResult

COLUMNS = [
    "run_id",
    "experiment",
    "dataset",
    "model",
    "backend",
    "seed",
    "randomness",
    "epsilon_target",
    "epsilon_spent",
    "delta",
    "accountant",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "max_grad_norm",
    "split",
    "metric",
    "value",
]

# Settings that do not change what is trained: where the data lies, which device runs it.
_NOT_IN_RUN_ID = ("device", "data_root")


def run_id(config: TrainConfig, data_sha256: str) -> str:
    """A short hash of everything that determines a run's result, the data's bytes included.

    >>> run_id(TrainConfig(), "0" * 64) == run_id(TrainConfig(device="cpu"), "0" * 64)
    True
    >>> run_id(TrainConfig(), "0" * 64) == run_id(TrainConfig(seed=1), "0" * 64)
    False
    """
    params = {k: v for k, v in dataclasses.asdict(config).items() if k not in _NOT_IN_RUN_ID}
    blob = json.dumps({"config": params, "data_sha256": data_sha256}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def result_rows(result: TrainResult, *, experiment: str, run: str) -> list[dict[str, Any]]:
    """The tidy rows of one finished run."""
    cfg, mech = result.config, result.mechanism
    common = {
        "run_id": run,
        "experiment": experiment,
        "dataset": cfg.dataset,
        "model": cfg.model,
        "backend": result.backend,
        "seed": cfg.seed,
        "randomness": cfg.randomness,
        "epsilon_target": cfg.epsilon if cfg.epsilon is not None else float("nan"),
        "epsilon_spent": mech.epsilon,
        "delta": mech.delta,
        "accountant": mech.accountant,
        "noise_multiplier": mech.noise_multiplier,
        "sample_rate": mech.sample_rate,
        "steps": mech.steps,
        "max_grad_norm": mech.max_grad_norm,
    }
    return [
        {**common, "split": split, "metric": metric, "value": value}
        for split, values in result.metrics.items()
        for metric, value in values.items()
    ]


def read_table(path: str | Path) -> pd.DataFrame:
    """The table at ``path``, or an empty one with the standard columns."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    return pd.read_csv(path)


def append_rows(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Append rows under a lock and replace the file atomically."""
    with locked(path):
        table = pd.concat(
            [read_table(path), pd.DataFrame(rows, columns=COLUMNS)], ignore_index=True
        )
        atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))


def summary(table: pd.DataFrame, *, split: str = "test") -> pd.DataFrame:
    """Mean and standard deviation over seeds of each metric, per target epsilon.

    >>> t = pd.DataFrame({"epsilon_target": [1.0, 1.0], "epsilon_spent": [0.99, 0.98],
    ...                   "seed": [0, 1], "split": "test", "metric": "auc", "value": [0.8, 0.9]})
    >>> summary(t).loc[1.0, ("auc", "mean")].round(3)
    np.float64(0.85)
    """
    rows = table[table["split"] == split]
    stats = (
        rows.pivot_table(
            index="epsilon_target", columns="metric", values="value", aggfunc=["mean", "std"]
        )
        .swaplevel(axis=1)
        .sort_index(axis=1)
    )
    stats[("epsilon_spent", "max")] = rows.groupby("epsilon_target")["epsilon_spent"].max()
    stats[("runs", "n")] = rows.groupby("epsilon_target")["seed"].nunique()
    return stats


def provenance(config: TrainConfig, *, data_sha256: str, device: str) -> dict[str, Any]:
    """Where a result came from: code version, packages, device, data checksum, parameters."""
    return {
        "git_commit": _git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {
            name: _version(name) for name in ("privkit", "torch", "opacus", "numpy", "medmnist")
        },
        "device": device,
        "device_name": torch.cuda.get_device_name(device)
        if device.startswith("cuda")
        else platform.processor() or "cpu",
        "data_sha256": data_sha256,
        "parameters": dataclasses.asdict(config),
    }


def write_provenance(out_dir: str | Path, run: str, record: dict[str, Any]) -> Path:
    return atomic_write_text(
        Path(out_dir) / "runs" / f"{run}.json", json.dumps(record, indent=2, default=str)
    )


def run_record(
    result: TrainResult, *, data_sha256: str, trained_together_with: int
) -> dict[str, Any]:
    """A trained run's provenance, wall time and stack size, taken where it trained."""
    record = provenance(result.config, data_sha256=data_sha256, device=result.device)
    record["seconds"] = result.seconds
    record["trained_together_with"] = trained_together_with
    return record | ledger_entry(result.spend)


def ledger_entry(spend: Spend | None) -> dict[str, Any]:
    """``{"ledger": {spend_id, head}}`` for a charged run: the ledger's head after its charge,
    an anchor kept outside the ledger (``privkit budget verify --head``); ``{}`` if uncharged."""
    return {} if spend is None else {"ledger": {"spend_id": spend.id, "head": spend.hash}}


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    """The commit of the privkit checkout, with ``-dirty`` when it has uncommitted changes."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{commit}-dirty" if dirty else commit
