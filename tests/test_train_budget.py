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
    assert (
        main(
            [
                "budget",
                "set",
                "--ledger",
                path,
                "--scope",
                "dataset:pneumoniamnist",
                "--epsilon",
                "1",
                "--delta",
                "1e-3",
            ]
        )
        == 0
    )
    code = main(
        [
            "train",
            "--ledger",
            path,
            "--epsilon",
            "4",
            "--data-root",
            str(synthetic_root),
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--delta",
            "1e-3",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 2
    assert "exceeded" in capsys.readouterr().err
    assert budget.Ledger(path).history() == []


def test_a_run_charges_the_data_it_reads_and_extra_scopes_only_inside_it(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The attacker trains on PneumoniaMNIST while charging a scope whose budget is untouched.
    ledger = budget.Ledger(tmp_path / "ledger.sqlite")
    ledger.set_budget("dataset:pneumoniamnist", epsilon=1.0, delta=1e-3)
    config = TrainConfig(epsilon=4.0, data_root=str(synthetic_root), **QUICK)
    monkeypatch.setattr(data, "load", lambda *a, **k: pytest.fail("data were read"))
    with pytest.raises(
        ValueError, match=r"scopes=\['dataset:chestmnist'\] lie outside dataset:pneumoniamnist"
    ):
        train(config, ledger=ledger, scopes=["dataset:chestmnist"])
    with pytest.raises(ValueError, match=r"Did you mean 'dataset:pneumoniamnist/institution:h1'"):
        train(config, ledger=ledger, scopes=["dataset:PneumoniaMNIST/institution:h1"])
    with pytest.raises(
        budget.BudgetExceededError
    ):  # a narrower scope does not dodge the dataset's budget
        train(config, ledger=ledger, scopes=["dataset:pneumoniamnist/institution:h1"])
    assert ledger.history() == []


def test_a_seeded_run_is_refused_unless_allowed_and_the_head_is_recorded(
    synthetic_root: Path, tmp_path: Path
) -> None:
    from privkit import experiments

    ledger = budget.Ledger(tmp_path / "ledger.sqlite")
    seeded = TrainConfig(epsilon=2.0, randomness="seeded", data_root=str(synthetic_root), **QUICK)
    with pytest.raises(budget.SeededRunError, match="allow_seeded"):
        train(seeded, ledger=ledger, progress=False)
    assert ledger.history() == []
    result = train(seeded, ledger=ledger, allow_seeded=True, progress=False)
    [spend] = ledger.history()
    assert spend.randomness.startswith("seeded:") and result.spend == spend
    with pytest.raises(budget.SeededRunError):  # the same stream twice is not two independent runs
        train(seeded, ledger=ledger, allow_seeded=True, progress=False)
    secure = TrainConfig(epsilon=2.0, seed=1, data_root=str(synthetic_root), **QUICK)
    experiments.sweep(
        [secure], experiment="t", out_dir=tmp_path / "out", ledger=ledger, progress=False
    )
    last = ledger.history()[-1]
    assert last.randomness == "secure"
    [record] = [p for p in (tmp_path / "out" / "runs").glob("*.json")]
    import json

    assert json.loads(record.read_text())["ledger"] == {"spend_id": last.id, "head": last.hash}
    assert ledger.verify(head=last.hash)  # the recorded head is an anchor on the chain
