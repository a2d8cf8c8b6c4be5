"""Tidy tables, provenance, atomic writes, and sweeps that resume instead of repeating."""

from __future__ import annotations

import dataclasses
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


# The store itself: one table type, one run id, provenance for every run of every sweep.

_KILLED_SWEEP = """
import os, signal, sys
from pathlib import Path

import pandas as pd

from privkit import experiments
from privkit.train import TrainConfig

real_to_csv, writes = pd.DataFrame.to_csv, []


def dies_in_its_second_append(self, target, **kwargs):
    writes.append(target)
    if len(writes) == 2:  # the table up to half of the second run's rows, when the process dies
        text = real_to_csv(self, None, **kwargs)
        Path(target).write_text(text[: 3 * len(text) // 4])
        os.kill(os.getpid(), signal.SIGKILL)
    return real_to_csv(self, target, **kwargs)


pd.DataFrame.to_csv = dies_in_its_second_append
root, out = sys.argv[1], sys.argv[2]
base = TrainConfig(data_root=root, backend="opacus", epochs=1, batch_size=32, lr=1.0,
                   device="cpu", delta=1e-3)
configs = experiments.epsilon_sweep(base, epsilons=[2.0], seeds=[0, 1])
experiments.sweep(configs, experiment="t", out_dir=out, progress=False)
"""


def test_a_writer_killed_mid_append_loses_nothing_and_the_resumed_sweep_duplicates_nothing(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL (no cleanup, no exception handler) while the second stack's rows are half
    written: the table on disk is the first stack's, whole; resuming trains the three other
    runs only and leaves every run's rows exactly once."""
    import signal
    import subprocess
    import sys

    script = tmp_path / "sweep.py"
    script.write_text(_KILLED_SWEEP)
    env = {**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    died = subprocess.run(
        [sys.executable, str(script), str(synthetic_root), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert died.returncode == -signal.SIGKILL, died.stderr
    table = results.Store(tmp_path / "out").table("metrics", results.COLUMNS)
    first = table.read()
    assert first["run_id"].nunique() == 1  # the first stack, all of it
    rows_per_run = len(first)
    kept = first.copy()
    assert (tmp_path / "out" / "runs" / f"{first['run_id'][0]}.json").exists()

    calls: list = []
    real = stacks.train_many
    monkeypatch.setattr(stacks, "train_many", lambda g, **k: calls.extend(g) or real(g, **k))
    configs = _configs(synthetic_root)
    again = experiments.sweep(configs, experiment="t", out_dir=tmp_path / "out", progress=False)
    assert len(calls) == 3 and configs[0] not in calls  # only what was not written
    assert again.groupby("run_id").size().tolist() == [rows_per_run] * 4  # each run once
    assert not again.duplicated(["run_id", "split", "metric"]).any()
    pd.testing.assert_frame_equal(table.read().iloc[:rows_per_run], kept)  # kept as written
    assert {p.stem for p in (tmp_path / "out" / "runs").glob("*.json")} == set(again["run_id"])


def test_run_ids_are_canonical_and_the_same_in_every_process() -> None:
    """The id of a plain config is SHA-256 of sorted-key JSON of it (without device and data
    root) and the data checksum; recorded here so a change to the scheme, which would orphan
    every results table, fails."""
    import hashlib
    import json
    import subprocess
    import sys

    from privkit.federated.algorithms import FederatedConfig

    sha = "ab" * 32
    assert results.run_id({"lr": 0.1, "epsilon": math.inf, "seed": 0}, sha) == "eb72ea5c3bfa39c4"
    config = TrainConfig(epsilon=2.0, seed=3)
    params = {
        k: v for k, v in dataclasses.asdict(config).items() if k not in ("device", "data_root")
    }
    blob = json.dumps({"config": params, "data_sha256": sha}, sort_keys=True).encode()
    assert results.run_id(config, sha) == hashlib.sha256(blob).hexdigest()[:16]
    code = (
        "from privkit import results; from privkit.train import TrainConfig; "
        f"print(results.run_id(TrainConfig(epsilon=2.0, seed=3), {sha!r}))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        env={**__import__("os").environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert other.stdout.strip() == results.run_id(config, sha)
    # Any plain config: key order, dataclass or dict, nested, all the same run.
    fed = FederatedConfig(rounds=2, epsilon=4.0)
    nested = {"study": {"b": 1, "a": [1, 2]}, "run": fed}
    reordered = {"run": dataclasses.asdict(fed), "study": {"a": (1, 2), "b": 1}}
    assert results.run_id(nested, sha) == results.run_id(reordered, sha)
    assert results.run_id(fed, sha) != results.run_id(FederatedConfig(rounds=3, epsilon=4.0), sha)
    with pytest.raises(ValueError, match=r"config=0.5 to be a dataclass or a mapping"):
        results.run_id(0.5, sha)


def test_a_table_keeps_its_column_set(tmp_path: Path) -> None:
    store = results.Store(tmp_path)
    fixed = store.table("metrics", ("run_id", "value"))
    fixed.append([{"run_id": "a", "value": 1.0}])
    with pytest.raises(ValueError, match=r"metrics.csv to have columns.*missing \['value'\].*"):
        fixed.append([{"run_id": "b", "score": 2.0}])
    free = store.table("notes")  # columns from the first rows written, then held
    free.append(pd.DataFrame({"run_id": ["a"], "note": ["x"]}))
    with pytest.raises(ValueError, match=r"unknown \['extra'\]"):
        free.append([{"run_id": "b", "note": "y", "extra": 1}])
    free.append([{"note": "y", "run_id": "b"}])  # column order does not matter
    assert free.read().to_dict("list") == {"run_id": ["a", "b"], "note": ["x", "y"]}
    assert fixed.run_ids() == {"a"} and store.table("absent", ("run_id",)).run_ids() == set()
    digits = store.table("digits", ("run_id", "value"))  # hex ids that parse as numbers
    digits.append([{"run_id": "1234567890123456", "value": 1}, {"run_id": "12e4", "value": 2}])
    assert digits.run_ids() == {"1234567890123456", "12e4"}
    store.save("notes", [{"other": 1}])  # a table computed in one go replaces the old one
    assert list(store.table("notes").read().columns) == ["other"]


def test_every_run_of_every_sweep_has_its_provenance(synthetic_root: Path, tmp_path: Path) -> None:
    """The privacy-utility sweep, the trust sweep and the federated study, each charged to a
    ledger: every run in each table has ``runs/<run_id>.json`` with the code, packages, device,
    data checksum, parameters and where it ran; a charged training run anchors the ledger."""
    from privkit import budget, trust
    from privkit.federated import study

    ledger = budget.Ledger(tmp_path / "ledger.sqlite")
    dataset = data.load("pneumoniamnist", root=synthetic_root)
    config = TrainConfig(
        data_root=str(synthetic_root),
        epochs=1,
        batch_size=64,
        device="cpu",
        delta=1e-3,
        epsilon=None,
        noise_multiplier=1.0,
    )
    common = dict(ledger=ledger, progress=False)
    swept = {
        "sweep": experiments.sweep([config], experiment="p", out_dir=tmp_path / "p", **common),
        "trust": trust.scored_sweep([config], experiment="t", out_dir=tmp_path / "t", **common),
        "study": study.run_study(
            dataset,
            study.settings(
                methods=["centralised", "fedavg"],
                partitions=["iid"],
                site_counts=[2],
                epsilons=[8.0],
                seeds=[0],
            ),
            out_dir=tmp_path / "s",
            rounds=1,
            batch_size=64,
            delta=1e-3,
            **common,
        )[0],
    }
    for name, table in swept.items():
        store = results.Store(tmp_path / {"sweep": "p", "trust": "t", "study": "s"}[name])
        runs = set(table["run_id"])
        assert runs and {p.stem for p in (store.out_dir / "runs").glob("*.json")} == runs, name
        for run in runs:
            record = store.read_provenance(run)
            assert record["data_sha256"] == dataset.sha256, name
            assert {"git_commit", "packages", "device", "parameters", "where"} <= set(record)
            assert record["where"]["executor"] == "local"
            federated = name == "study" and set(table[table.run_id == run].method) == {"fedavg"}
            if federated:  # charged per site by the federated planner, which returns no spend
                continue
            spend = next(s for s in ledger.history() if s.id == record["ledger"]["spend_id"])
            assert spend.run_id == run and spend.hash == record["ledger"]["head"], name
            assert ledger.verify(head=record["ledger"]["head"]).events >= 1


def test_a_stack_is_a_pure_unit_its_configs_and_data_in_its_rows_out(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a cluster runs: the same configs and data give the same rows (seeded research mode),
    and the unit writes nothing (the driver alone writes)."""
    from dataclasses import replace

    ds = data.load("pneumoniamnist", root=synthetic_root)
    base = TrainConfig(
        epochs=1,
        batch_size=64,
        device="cpu",
        delta=1e-3,
        epsilon=None,
        noise_multiplier=1.0,
        randomness="seeded",
    )
    configs = [replace(base, seed=s) for s in (0, 1)]
    ids = [results.run_id(c, ds.sha256) for c in configs]
    monkeypatch.chdir(tmp_path)
    first = stacks.train_stack(ds, configs, ids, "t")
    second = stacks.train_stack(ds, configs, ids, "t")
    assert [o.run_id for o in first] == ids and list(tmp_path.iterdir()) == []
    for a, b in zip(first, second):  # (epsilon_target is NaN: compare as frames)
        pd.testing.assert_frame_equal(
            pd.DataFrame(a.rows["metrics"]), pd.DataFrame(b.rows["metrics"])
        )
    assert all(o.record["data_sha256"] == ds.sha256 for o in first)
    assert [o.record["trained_together_with"] for o in first] == [2, 2]
