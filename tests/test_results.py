"""Tidy tables, provenance, atomic writes, and sweeps that resume instead of repeating."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from privkit import data, experiments, results, stacks
from privkit.train import TrainConfig

QUICK = dict(epochs=1, batch_size=32, lr=1.0, device="cpu", delta=1e-3)


def _configs(root: Path) -> list[TrainConfig]:
    base = TrainConfig(data_root=str(root), backend="opacus", **QUICK)  # one run at a time
    return experiments.epsilon_sweep(base, epsilons=[2.0], seeds=[0, 1])


def test_sweep_writes_tidy_rows_and_provenance(synthetic_root: Path, tmp_path: Path) -> None:
    table = experiments.sweep(
        _configs(synthetic_root), experiment="t", out_dir=tmp_path, progress=False
    )
    assert tuple(table.columns) == results.COLUMNS
    assert table["run_id"].nunique() == 4  # (2.0, inf) x seeds (0, 1)
    assert set(table["split"]) == {"val", "test"}
    assert {"auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity"} <= set(
        table["metric"]
    )
    nonprivate = table[table["epsilon_target"] == math.inf]
    assert (nonprivate["backend"] == "nonprivate").all() and (
        nonprivate["noise_multiplier"] == 0
    ).all()
    private = table[table["epsilon_target"] == 2.0]
    assert (private["epsilon_spent"] <= 2.0).all() and (private["backend"] == "opacus").all()
    sha = data.load("pneumoniamnist", root=synthetic_root).sha256
    for run in table["run_id"].unique():
        record = json.loads((tmp_path / "runs" / f"{run}.json").read_text())
        assert record["data_sha256"] == sha
        assert {"git_commit", "packages", "device", "parameters"} <= set(record)
        assert record["packages"]["torch"] != "not installed"
    assert not [p for p in tmp_path.rglob(".*") if p.is_file() and not p.name.endswith(".lock")]


def test_interrupted_sweep_resumes_and_finished_runs_are_reused(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configs = _configs(synthetic_root)
    calls = []
    real_train_many = stacks.train_many

    def flaky_train_many(group, **kwargs):
        calls.extend(group)
        if len(calls) > 2:
            raise KeyboardInterrupt  # the user stops the sweep during its second group
        return real_train_many(group, **kwargs)

    monkeypatch.setattr(stacks, "train_many", flaky_train_many)
    with pytest.raises(KeyboardInterrupt):
        experiments.sweep(configs, experiment="t", out_dir=tmp_path, progress=False)
    assert results.Store(tmp_path).table("metrics").read()["run_id"].nunique() == 2

    calls.clear()
    table = experiments.sweep(configs, experiment="t", out_dir=tmp_path, progress=False)
    assert calls == configs[2:]  # only the unfinished runs
    assert table["run_id"].nunique() == 4
    calls.clear()
    experiments.sweep(configs, experiment="t", out_dir=tmp_path, progress=False)
    assert calls == []


def test_fast_sweep_trains_compatible_runs_together(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = TrainConfig(data_root=str(synthetic_root), backend="fast", **QUICK)
    configs = experiments.epsilon_sweep(base, epsilons=[1.0, 4.0], seeds=[0, 1])
    groups = []
    real_train_many = stacks.train_many
    monkeypatch.setattr(
        stacks, "train_many", lambda g, **k: groups.append(g) or real_train_many(g, **k)
    )
    table = experiments.sweep(
        configs, experiment="t", out_dir=tmp_path, max_stack=4, progress=False
    )
    assert groups == [configs[:4], configs[4:]]  # six models, stacks of at most four
    assert table["run_id"].nunique() == 6
    assert set(table.loc[table["epsilon_target"] < 10, "backend"]) == {"fast"}


def test_a_failed_write_keeps_the_old_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = results.Store(tmp_path).table("metrics", results.COLUMNS)
    path = table.path
    row = dict.fromkeys(results.COLUMNS, 1)
    table.append([row])
    before = path.read_bytes()

    def broken_to_csv(self, target, **kwargs):
        Path(target).write_text("half a tab")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken_to_csv)
    with pytest.raises(OSError, match="disk full"):
        table.append([row])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv", "metrics.csv.lock"]


def test_run_id_depends_on_what_is_trained_and_the_data() -> None:
    a = results.run_id(TrainConfig(), "a" * 64)
    assert a == results.run_id(TrainConfig(device="cuda", data_root="/elsewhere"), "a" * 64)
    assert a != results.run_id(TrainConfig(lr=0.5), "a" * 64)
    assert a != results.run_id(TrainConfig(), "b" * 64)


def test_summary_gives_mean_and_sd_per_epsilon() -> None:
    table = pd.DataFrame(
        {
            "epsilon_target": [1.0, 1.0, math.inf],
            "epsilon_spent": [0.9, 0.95, math.inf],
            "seed": [0, 1, 0],
            "split": "test",
            "metric": "auc",
            "value": [0.7, 0.9, 0.95],
        }
    )
    s = results.summary(table)
    assert s.loc[1.0, ("auc", "mean")] == pytest.approx(0.8)
    assert s.loc[1.0, ("auc", "std")] == pytest.approx(0.1414, abs=1e-4)
    assert s.loc[1.0, ("epsilon_spent", "max")] == 0.95
    assert s.loc[1.0, ("runs", "n")] == 2


def test_atomic_writes_get_the_permissions_of_any_new_file(tmp_path: Path) -> None:
    import os

    from privkit._io import atomic_write_text

    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "table.csv", "a,b\n")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # mkstemp alone gives 0o600
