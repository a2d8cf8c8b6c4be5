"""The driver loop of every sweep, on the local executor: failures named and the rest kept, a
driver-side error stops dispatching, the ledger charged under the table's run ids before a stack
is trained. The same loop on a real Ray cluster is in test_ray.py."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from privkit import accounting, budget, executors, experiments
from privkit.train import TrainConfig


def _square(data: int, x: int) -> int:
    if x == 3:
        raise ArithmeticError(f"unit {x} broke")
    return data * x * x


def test_a_failing_unit_is_named_after_every_other_unit_finished() -> None:
    units = [executors.Unit(name=f"u{x}", fn=_square, data=2, args=(x,)) for x in range(5)]
    got = {}
    local = executors.LocalExecutor()
    failed = r"1 of 5 unit\(s\) failed(.|\n)*u3: ArithmeticError: unit 3"
    with pytest.raises(executors.UnitsFailedError, match=failed) as err:
        executors.run(
            units,
            executor=local,
            on_finished=lambda f: got.update({f.unit.name: f.value}),
            progress=False,
        )
    assert got == {"u0": 0, "u1": 2, "u2": 8, "u4": 32}
    assert list(err.value.failures) == ["u3"]


def test_an_error_at_the_driver_stops_dispatching() -> None:
    units = [executors.Unit(name=f"u{x}", fn=_square, data=1, args=(x,)) for x in range(4)]
    dispatched, got = [], []

    def before(unit: executors.Unit) -> None:
        if unit.name == "u2":
            raise budget.BudgetExceededError("refused")
        dispatched.append(unit.name)

    with pytest.raises(budget.BudgetExceededError, match="refused"):
        executors.run(
            units,
            executor=executors.LocalExecutor(),
            on_finished=lambda f: got.append(f.unit.name),
            before_dispatch=before,
            progress=False,
        )
    assert dispatched == got == ["u0", "u1"]


def test_executors_by_name_and_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(executors.resolve(), executors.LocalExecutor)
    monkeypatch.setenv(executors.ENV, "ray:10.0.0.5:6379")
    assert executors.resolve().address == "10.0.0.5:6379"
    assert executors.resolve("ray").address is None
    with pytest.raises(ValueError, match="executor='ray:'"):
        executors.resolve("ray:")
    with pytest.raises(ValueError, match="max_in_flight=0"):
        executors.RayExecutor(max_in_flight=0)


def test_a_sweep_records_where_each_run_trained(synthetic_root: Path, tmp_path: Path) -> None:
    config = TrainConfig(
        data_root=str(synthetic_root), epochs=1, batch_size=64, device="cpu", epsilon=math.inf
    )
    table = experiments.sweep(
        [config], experiment="e", out_dir=tmp_path, executor="local", progress=False
    )
    [run] = table["run_id"].unique()
    where = json.loads((tmp_path / "runs" / f"{run}.json").read_text())["where"]
    assert where["executor"] == "local" and where["hostname"] and where["pid"] > 0


def test_the_driver_charges_each_stack_before_training_it(
    synthetic_root: Path, tmp_path: Path
) -> None:
    """Two seeded runs against a budget that holds one: the first is charged under its table run
    id, trained and written; the second is refused before it is dispatched, and trains nothing."""
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
    configs = [replace(base, seed=s) for s in (0, 1)]
    one = accounting.epsilon(noise_multiplier=1.0, sample_rate=64 / 256, steps=4, delta=1e-3)
    ledger = budget.Ledger(tmp_path / "ledger.sqlite")
    ledger.set_budget("dataset:pneumoniamnist", epsilon=1.05 * one, delta=1e-3)
    swept = dict(experiment="e", out_dir=tmp_path, ledger=ledger, progress=False)
    with pytest.raises(budget.BudgetExceededError):
        experiments.sweep(configs, allow_seeded=True, **swept)
    table = experiments.sweep(configs[:1], **swept)
    [spend] = ledger.history()
    assert list(table["run_id"].unique()) == [spend.run_id]  # reused: trained and charged once
    assert spend.steps == 4 and spend.noise_multiplier == 1.0
    assert sorted(p.stem for p in (tmp_path / "runs").glob("*.json")) == [spend.run_id]
