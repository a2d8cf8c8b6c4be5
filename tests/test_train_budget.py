"""Training asks the ledger before it reads data: a refused run charges nothing and reads
nothing; an accepted one is recorded as the mechanism that ran."""

from __future__ import annotations

from pathlib import Path

import pytest

from privkit import budget, data
from privkit.cli import main
from privkit.train import TrainConfig, train

QUICK = dict(epochs=1, batch_size=32, device="cpu", delta=1e-3)


def test_a_refused_run_charges_nothing_and_reads_no_data(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = budget.Ledger(tmp_path / "ledger.sqlite")
    ledger.set_budget("dataset:pneumoniamnist", epsilon=1.0, delta=1e-3)
    monkeypatch.setattr(data, "load", lambda *a, **k: pytest.fail("data were read"))
    with pytest.raises(budget.BudgetExceededError, match="budget epsilon=1"):
        train(TrainConfig(epsilon=4.0, data_root=str(synthetic_root), **QUICK), ledger=ledger)
    assert ledger.history() == []


def test_an_accepted_run_is_charged_its_mechanism(synthetic_root: Path, tmp_path: Path) -> None:
    ledger = budget.Ledger(tmp_path / "ledger.sqlite")
    ledger.set_budget("dataset:pneumoniamnist", epsilon=2.2, delta=1e-3)
    config = TrainConfig(epsilon=2.0, data_root=str(synthetic_root), **QUICK)
    mech = train(config, ledger=ledger, progress=False).mechanism
    [spend] = ledger.history()
    assert (spend.noise_multiplier, spend.sample_rate, spend.steps) == pytest.approx(
        (mech.noise_multiplier, mech.sample_rate, mech.steps)
    )
    assert ledger.spent("dataset:pneumoniamnist").epsilon == pytest.approx(mech.epsilon, rel=0.02)
    # A second run of the same size no longer fits: two runs at 2 compose to more than 2.2.
    with pytest.raises(budget.BudgetExceededError):
        train(config, ledger=ledger, progress=False)
    assert len(ledger.history()) == 1


def test_cli_train_refused_by_the_ledger_exits_non_zero(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = str(tmp_path / "ledger.sqlite")
    assert main(["budget", "set", "--ledger", path, "--scope", "dataset:pneumoniamnist",
                 "--epsilon", "1", "--delta", "1e-3"]) == 0  # fmt: skip
    code = main(["train", "--ledger", path, "--epsilon", "4", "--data-root", str(synthetic_root),
                 "--epochs", "1", "--batch-size", "32", "--delta", "1e-3", "--device", "cpu", "--no-progress"])  # fmt: skip
    assert code == 2
    assert "exceeded" in capsys.readouterr().err
    assert budget.Ledger(path).history() == []
