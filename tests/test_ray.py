"""Sweeps on a real Ray cluster (the session's ``ray_head``: a separate process with 2 CPUs):
the same rows as a local run, bit for bit in seeded mode; a worker killed mid-task is retried
with nothing lost or duplicated; a unit that fails for good is named while the rest is kept; an
interrupted driver resumes without training a finished run again; shadow models split into
tasks equal one local stack; the bench's dispatch overhead."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import session_processes

from privkit import bench, data, executors, experiments, recipes, results, trust
from privkit.attacks import membership
from privkit.federated import study
from privkit.train import TrainConfig

pytest.importorskip("ray")

KEYS = ["run_id", "split", "metric"]


@pytest.fixture(scope="module")
def configs(synthetic_root: Path) -> list[TrainConfig]:
    """Four seeded runs, each its own stack on a CPU: DP-SGD at a fixed noise, and without DP."""
    base = TrainConfig(
        data_root=str(synthetic_root),
        epochs=1,
        batch_size=64,
        device="cpu",
        delta=1e-3,
        epsilon=None,
        noise_multiplier=1.0,
        randomness="seeded",
    )
    return [replace(base, noise_multiplier=sigma, seed=s) for sigma in (1.0, 0.0) for s in (0, 1)]


@pytest.fixture(scope="module")
def local(configs: list[TrainConfig], tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("local")
    experiments.sweep(configs, experiment="x", out_dir=out, executor="local", progress=False)
    return _rows(out)


def _rows(out: Path) -> pd.DataFrame:
    table = pd.read_csv(out / "metrics.csv").drop(columns="experiment")
    return table.sort_values(KEYS).reset_index(drop=True)


def _records(out: Path) -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in sorted((out / "runs").glob("*.json"))}


def _kill_first_task(head: dict, prefix: str, killed: list) -> threading.Thread:
    """Kill (SIGKILL) the first worker of the test cluster seen running a task named ``prefix...``;
    Ray names a worker's process ``ray::<task name>`` while it runs the task."""

    def watch() -> None:
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            for pid, command in session_processes(head["pid"]).items():
                if command.startswith(f"ray::{prefix}"):
                    os.kill(pid, signal.SIGKILL)
                    killed.append((pid, command))
                    return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_ray_sweep_writes_the_rows_of_a_local_one(
    ray_head, configs, local, tmp_path: Path
) -> None:
    executor = executors.resolve(f"ray:{ray_head['address']}")
    table = experiments.sweep(
        configs, experiment="x", out_dir=tmp_path, executor=executor, progress=False
    )
    assert table["run_id"].nunique() == 4 and executor.slots([]) == 2  # one CPU per unit, 2 CPUs
    pd.testing.assert_frame_equal(_rows(tmp_path), local, check_exact=True)
    for record in _records(tmp_path).values():
        where = json.loads(record)["where"]
        assert (
            where["executor"] == "ray"
            and where["pid"] != os.getpid()
            and where["node_ip"] == "127.0.0.1"
        )
        assert len(where["node_id"]) == 56 and where["gpu_ids"] == []


def test_a_killed_worker_is_retried_and_nothing_is_lost_or_duplicated(
    ray_head, configs, local, tmp_path: Path
) -> None:
    killed: list = []
    watcher = _kill_first_task(ray_head, "kill-retried: ", killed)
    executor = executors.RayExecutor(ray_head["address"], max_retries=2)
    experiments.sweep(
        configs, experiment="kill-retried", out_dir=tmp_path, executor=executor, progress=False
    )
    watcher.join()
    [(pid, command)] = killed
    run = command.split(": ")[1].split()[0]  # the unit's only run id
    pd.testing.assert_frame_equal(
        _rows(tmp_path), local, check_exact=True
    )  # each row once, same values
    assert json.loads(_records(tmp_path)[run])["where"]["pid"] != pid  # trained again, elsewhere


def test_a_unit_that_fails_for_good_is_named_and_the_rest_kept(
    ray_head, configs, local, tmp_path: Path
) -> None:
    killed: list = []
    watcher = _kill_first_task(ray_head, "fails: ", killed)
    once = executors.RayExecutor(ray_head["address"], max_retries=0)
    with pytest.raises(
        executors.UnitsFailedError, match=r"1 of 4 unit\(s\) failed for good"
    ) as err:
        experiments.sweep(
            configs, experiment="fails", out_dir=tmp_path, executor=once, progress=False
        )
    watcher.join()
    [(_, command)] = killed
    [name] = err.value.failures
    assert command == f"ray::{name}" and "WorkerCrashedError" in str(err.value)
    run = name.split(": ")[1].split()[0]
    kept = _records(tmp_path)
    assert set(_rows(tmp_path)["run_id"]) == set(local["run_id"]) - {run} == set(kept)
    again = executors.RayExecutor(ray_head["address"])
    experiments.sweep(configs, experiment="fails", out_dir=tmp_path, executor=again, progress=False)
    pd.testing.assert_frame_equal(_rows(tmp_path), local, check_exact=True)
    assert {k: v for k, v in _records(tmp_path).items() if k in kept} == kept  # not trained again


def test_an_interrupted_driver_resumes_without_training_a_finished_run_again(
    ray_head, configs, local, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    append = results.Table.append

    def append_then_interrupt(table, rows) -> None:  # Ctrl-C right after the first stack is written
        append(table, rows)
        raise KeyboardInterrupt

    monkeypatch.setattr(results.Table, "append", append_then_interrupt)
    executor = executors.RayExecutor(ray_head["address"], max_in_flight=1)
    with pytest.raises(KeyboardInterrupt):
        experiments.sweep(
            configs, experiment="resumed", out_dir=tmp_path, executor=executor, progress=False
        )
    monkeypatch.setattr(results.Table, "append", append)
    finished = _records(tmp_path)
    assert 1 <= len(finished) < 4 and set(_rows(tmp_path)["run_id"]) == set(finished)
    deadline = time.monotonic() + 30  # what was in flight was cancelled, its worker stopped
    while any(c.startswith("ray::resumed") for c in session_processes(ray_head["pid"]).values()):
        assert time.monotonic() < deadline, "a cancelled task still runs"
        time.sleep(0.1)
    experiments.sweep(
        configs, experiment="resumed", out_dir=tmp_path, executor=executor, progress=False
    )
    pd.testing.assert_frame_equal(_rows(tmp_path), local, check_exact=True)
    assert {k: v for k, v in _records(tmp_path).items() if k in finished} == finished


def test_bench_times_dispatch_against_training_here_and_on_ray(
    ray_head, synthetic_root: Path
) -> None:
    root = str(synthetic_root)
    report = bench.time_ray(
        address=ray_head["address"], units=2, epochs=1, data_root=root, progress=False
    )
    rows = {(r["executor"], r["workers"], r["threads"]): r for r in report["rows"]}
    assert len(rows) == 4 and report["cluster"]["CPU"] == 2
    for (executor, _, _), r in rows.items():
        assert (
            r["units"] == 2
            and r["unit_s"] > 0
            and r["wall_s"] >= 2 * r["unit_s"] / r["workers"] * 0.99
        )
        assert (r["overhead_ms"] > 0) == (
            executor == "ray"
        )  # a result's way back takes time; here none
    assert "overhead_ms" in bench.format_ray(report)


def test_shadow_models_split_into_ray_tasks_equal_one_local_stack(
    ray_head, synthetic_root: Path
) -> None:
    ds = data.load("pneumoniamnist", root=synthetic_root)
    config = TrainConfig(
        epochs=1,
        batch_size=16,
        epsilon=None,
        noise_multiplier=1.0,
        randomness="seeded",
        device="cpu",
        data_root=str(synthetic_root),
    )
    shadows = dict(n_models=4, pool_size=64, dataset=ds, seed=3, progress=False)
    here = membership.train_shadows(config, **shadows, executor="local")
    there = membership.train_shadows(
        config, **shadows, max_stack=2, executor=f"ray:{ray_head['address']}"
    )
    assert (there.members == here.members).all() and (there.logits == here.logits).all()
    assert [r.config.seed for r in there.results] == [0, 1, 2, 3]


@pytest.mark.slow
def test_reproduce_on_ray_writes_the_rows_of_a_local_sweep(
    ray_head, synthetic_root: Path, tmp_path: Path
) -> None:
    """``privkit reproduce --ray ADDRESS``: the notebook's kernel drives the cluster, and its table
    holds the rows of the same sweep run here (seeded, through the notebook's ``overrides``)."""
    training = dict(epochs=1, batch_size=32, randomness="seeded")
    parameters = dict(
        recipes=["cnn"],
        epsilons=[8.0],
        seeds=[0],
        overrides=training,
        delta=0.001,
        device="cpu",
        data_root=str(synthetic_root),
    )
    spec = {"notebook": "privacy_utility.ipynb", "parameters": parameters}
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "privacy_utility.yaml").write_text(yaml.safe_dump(spec))
    experiments.reproduce(
        experiments_dir=tmp_path / "experiments",
        notebooks_dir=Path(__file__).parents[1] / "notebooks",
        results_dir=tmp_path / "results",
        figures_dir=tmp_path / "figures",
        executor=f"ray:{ray_head['address']}",
    )
    configs = recipes.sweep_recipes(
        ["cnn"], [8.0], [0], delta=0.001, device="cpu", data_root=str(synthetic_root), **training
    )
    experiments.sweep(
        configs, experiment="privacy_utility", out_dir=tmp_path / "local", progress=False
    )
    notebook = tmp_path / "results" / "privacy_utility"
    pd.testing.assert_frame_equal(_rows(notebook), _rows(tmp_path / "local"), check_exact=True)
    assert {json.loads(r)["where"]["executor"] for r in _records(notebook).values()} == {"ray"}


def test_the_trust_sweep_and_the_federated_study_run_on_ray(
    ray_head, synthetic_root: Path, tmp_path: Path
) -> None:
    ray = f"ray:{ray_head['address']}"
    config = TrainConfig(
        data_root=str(synthetic_root), epochs=1, batch_size=64, device="cpu", epsilon=math.inf
    )
    scores = trust.scored_sweep(
        [config], experiment="t", out_dir=tmp_path, executor=ray, progress=False
    )
    assert len(scores) == 64 + 128 and scores["logit"].notna().all()  # every val and test example
    dataset = data.load("pneumoniamnist", root=synthetic_root)
    runs = study.settings(
        methods=["centralised", "fedavg"],
        partitions=["iid"],
        site_counts=[2],
        epsilons=[math.inf],
        seeds=[0],
    )
    out = tmp_path / "study"
    table, sites = study.run_study(
        dataset,
        runs,
        out_dir=out,
        rounds=1,
        batch_size=64,
        delta=1e-3,
        executor=ray,
        progress=False,
    )
    assert table["run_id"].nunique() == 2 and sorted(sites.groupby("run_id").size()) == [1, 2]
    for record in [*(out / "runs").glob("*.json"), *(tmp_path / "runs").glob("*.json")]:
        assert json.loads(record.read_text())["where"]["executor"] == "ray"
