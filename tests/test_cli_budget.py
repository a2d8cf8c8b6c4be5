"""`privkit budget`: set, show, history and charge on a ledger file; refusals and bad input
exit 2 with a message on stderr and change nothing."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from privkit.accounting import epsilon
from privkit.budget import Ledger, Scope
from privkit.cli import main
from privkit.mechanism import plan

D = "dataset:pneumoniamnist"
H1 = f"{D}/institution:h1"
RUN = ["--noise-multiplier", "1", "--sample-rate", "0.05", "--steps", "50", "--delta", "1e-5"]
EPS = epsilon(noise_multiplier=1.0, sample_rate=0.05, steps=50, delta=1e-5)  # one RUN, ~2.68
EPS2 = epsilon(noise_multiplier=1.0, sample_rate=0.05, steps=100, delta=1e-5)  # two, composed


def n_spends(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT count(*) FROM spends").fetchone()[0]
    finally:
        db.close()


@pytest.fixture
def ledger_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("PRIVKIT_LEDGER", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))  # never the user's own ledger
    return tmp_path / "ledger.sqlite"


def test_set_show_history(ledger_path: Path, capsys: pytest.CaptureFixture) -> None:
    ledger = ["--ledger", str(ledger_path)]
    assert main(["budget", "set", "--scope", D, "--epsilon", "4", "--delta", "1e-5", *ledger]) == 0
    assert f"{D}: budget epsilon=4, delta=1e-05" in capsys.readouterr().out
    assert (
        main(
            ["budget", "charge", "--scope", H1, *RUN, "--run-id", "r1", "--actor", "alice", *ledger]
        )
        == 0
    )
    assert f"epsilon={EPS:.3f}" in capsys.readouterr().out
    Ledger(ledger_path).charge(
        [Scope("pneumoniamnist", institution="h2")],
        plan(noise_multiplier=1.0, sample_rate=0.05, steps=50, delta=1e-5),
        run_id="r2",
        actor="bob",
    )
    assert main(["budget", "show", *ledger]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, rows = lines[0], {line.split()[0]: line for line in lines[1:4]}
    assert "spent (composed)" in header and "spent (sum)" in header and "remaining" in header
    assert "eps=4 delta=1e-05" in rows[D] and f"{4 - EPS:.3f}" in rows[D]  # h1, h2 in parallel
    assert "no budget" in rows[H1] and f"{EPS:.3f}" in rows[H1]
    assert main(["budget", "show", "--scope", H1, *ledger]) == 0
    assert D + " " not in capsys.readouterr().out  # only h1 and what lies in it
    assert main(["budget", "history", "--scope", H1, *ledger]) == 0
    out = capsys.readouterr().out
    assert "r1" in out and "alice" in out and "r2" not in out


def test_a_refused_charge_exits_2_and_charges_nothing(
    ledger_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ledger = ["--ledger", str(ledger_path)]
    assert (
        main(
            [
                "budget",
                "set",
                "--scope",
                D,
                "--epsilon",
                f"{(EPS + EPS2) / 2}",
                "--delta",
                "1e-5",
                *ledger,
            ]
        )
        == 0
    )
    assert main(["budget", "charge", "--scope", H1, *RUN, "--run-id", "r1", *ledger]) == 0
    capsys.readouterr()
    assert main(["budget", "charge", "--scope", D, *RUN, "--run-id", "r2", *ledger]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"privkit budget: error: Privacy budget of {D} exceeded")
    assert f"spent {EPS:.4g}, requested {EPS:.4g}" in err and "nothing was charged" in err
    assert n_spends(ledger_path) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["set", "--scope", D, "--epsilon", "0", "--delta", "1e-5"], "epsilon=0.0 in (0, inf)"),
        (["set", "--scope", D, "--epsilon", "-2", "--delta", "1e-5"], "epsilon=-2.0 in (0, inf)"),
        (["set", "--scope", D, "--epsilon", "inf", "--delta", "1e-5"], "epsilon=inf in (0, inf)"),
        (["set", "--scope", D, "--epsilon", "1", "--delta", "1"], "delta=1.0 in (0, 1)"),
        (
            ["set", "--scope", "hospital:h1", "--epsilon", "1", "--delta", "1e-5"],
            "Unknown scope='hospital:h1'",
        ),
        (
            ["charge", "--scope", "dataset:x/ward:3", *RUN, "--run-id", "r"],
            "Unknown scope='dataset:x/ward:3'",
        ),
        (["charge", "--scope", D, *RUN, "--steps", "-1", "--run-id", "r"], "steps=-1"),
        (
            ["set", "--scope", "dataset:PneumoniaMNIST", "--epsilon", "1", "--delta", "1e-5"],
            f"Unknown dataset 'PneumoniaMNIST' in scope 'dataset:PneumoniaMNIST'; did you mean '{D}'?",
        ),
        (
            ["charge", "--scope", "dataset:pneumonia/institution:h1", *RUN, "--run-id", "r"],
            f"did you mean '{H1}'?",
        ),
        (
            ["charge", "--scope", "dataset:mimic-cxr", *RUN, "--run-id", "r"],
            "register --dataset NAME --size N",
        ),
        (
            ["charge", "--scope", D, *RUN, "--run-id", "r", "--randomness", "seeded:ab12"],
            "Pass allow_seeded=True (privkit budget charge --allow-seeded) only for public benchmark data",
        ),
        (
            ["charge", "--scope", D, *RUN, "--run-id", "r", "--randomness", "seeded:AB12"],
            "randomness='seeded:AB12'",
        ),
        (["register", "--dataset", "MIMIC", "--size", "10"], "Expected name='MIMIC' in lower case"),
        (
            ["register", "--dataset", "mimic", "--size", "0"],
            "Expected size=0 to be an integer >= 1",
        ),
    ],
)
def test_bad_input_exits_2_and_records_nothing(
    ledger_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    assert main(["budget", *args, "--ledger", str(ledger_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("privkit budget: error: ") and message in err
    ledger = Ledger(ledger_path, read_only=True)
    assert ledger.budgets() == [] and ledger.history() == []


def test_a_file_that_is_not_a_ledger_exits_2_and_stays_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("not a ledger\n" * 200)
    for args in (["show"], ["set", "--scope", D, "--epsilon", "1", "--delta", "1e-5"]):
        assert main(["budget", *args, "--ledger", str(junk)]) == 2
        assert f"{junk} is not a privkit ledger" in capsys.readouterr().err
    assert junk.read_text() == "not a ledger\n" * 200


def test_show_never_creates_a_ledger(ledger_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["budget", "show", "--ledger", str(ledger_path)]) == 2
    assert f"No ledger at {ledger_path}" in capsys.readouterr().err
    assert not ledger_path.exists()


def test_the_ledger_comes_from_privkit_ledger_without_the_option(
    ledger_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    assert main(["budget", "set", "--scope", D, "--epsilon", "4", "--delta", "1e-5"]) == 0
    assert (tmp_path / "xdg" / "privkit" / "ledger.sqlite").exists()  # the default
    monkeypatch.setenv("PRIVKIT_LEDGER", str(ledger_path))
    assert main(["budget", "set", "--scope", H1, "--epsilon", "2", "--delta", "1e-5"]) == 0
    assert [b.scope for b in Ledger(ledger_path).budgets()] == [H1]
    other = tmp_path / "other.sqlite"
    assert (
        main(
            [
                "budget",
                "set",
                "--scope",
                D,
                "--epsilon",
                "1",
                "--delta",
                "1e-5",
                "--ledger",
                str(other),
            ]
        )
        == 0
    )
    assert [b.scope for b in Ledger(ledger_path).budgets()] == [H1] and other.exists()


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes through permission bits (see test_budget.py)"
)
def test_a_read_only_ledger_shows_but_refuses_to_set(
    ledger_path: Path, capsys: pytest.CaptureFixture
) -> None:
    Ledger(ledger_path).set_budget(D, epsilon=4.0, delta=1e-5)
    ledger_path.chmod(0o444)
    try:
        assert main(["budget", "show", "--ledger", str(ledger_path)]) == 0
        args = [
            "budget",
            "set",
            "--scope",
            D,
            "--epsilon",
            "5",
            "--delta",
            "1e-5",
            "--ledger",
            str(ledger_path),
        ]
        assert main(args) == 2
        assert "read-only" in capsys.readouterr().err
    finally:
        ledger_path.chmod(0o644)
    assert [b.epsilon for b in Ledger(ledger_path).budgets()] == [4.0]


def test_register_raise_and_history(ledger_path: Path, capsys: pytest.CaptureFixture) -> None:
    ledger = ["--ledger", str(ledger_path)]
    mimic = "dataset:mimic-cxr"
    assert (
        main(
            [
                "budget",
                "register",
                "--dataset",
                "mimic-cxr",
                "--size",
                "377110",
                "--actor",
                "steward",
                "--description",
                "PhysioNet",
                *ledger,
            ]
        )
        == 0
    )
    assert f"{mimic} registered with 377110 records" in capsys.readouterr().out
    assert (
        main(["budget", "set", "--scope", mimic, "--epsilon", "4", "--delta", "1e-6", *ledger]) == 0
    )
    raise_ = ["budget", "set", "--scope", mimic, "--epsilon", "6", "--delta", "1e-6", *ledger]
    assert main(raise_) == 2
    err = capsys.readouterr().err
    assert (
        "without raise_budget=True and a reason (privkit budget set --raise --reason TEXT)" in err
    )
    assert main([*raise_, "--raise"]) == 2
    assert main([*raise_, "--raise", "--reason", "DPO ticket 42", "--actor", "dpo"]) == 0
    assert "reason: DPO ticket 42" in capsys.readouterr().out
    assert (
        main(
            [
                "budget",
                "charge",
                "--scope",
                f"{mimic}/institution:bidmc",
                *RUN[:-1],
                "1e-6",
                "--run-id",
                "r1",
                "--randomness",
                "seeded:ab12",
                "--allow-seeded",
                *ledger,
            ]
        )
        == 0
    )
    assert "(seeded:ab12); ledger head " in capsys.readouterr().out
    assert main(["budget", "history", *ledger]) == 0
    lines = capsys.readouterr().out.splitlines()
    kinds = [line.split()[2] for line in lines[1:]]
    assert kinds == ["dataset", "budget", "raise", "spend"]
    assert "PhysioNet" in lines[1] and "DPO ticket 42" in lines[3] and "dpo" in lines[3]
    assert "seeded:ab12" in lines[4] and "r1" in lines[4]
    assert [b.epsilon for b in Ledger(ledger_path).budgets()] == [4.0, 6.0]


def test_verify_prints_the_head_and_checks_an_anchor(
    ledger_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ledger = ["--ledger", str(ledger_path)]
    assert main(["budget", "set", "--scope", D, "--epsilon", "4", "--delta", "1e-5", *ledger]) == 0
    assert main(["budget", "charge", "--scope", H1, *RUN, "--run-id", "r1", *ledger]) == 0
    anchor = capsys.readouterr().out.split("ledger head ")[1].strip()  # recorded with the run
    assert main(["budget", "verify", *ledger]) == 0
    out = capsys.readouterr().out
    assert f"hash chain intact, 2 events, head {anchor}" in out and "--head HASH" in out
    assert anchor == Ledger(ledger_path).verify().head
    assert main(["budget", "charge", "--scope", H1, *RUN, "--run-id", "r2", *ledger]) == 0
    assert main(["budget", "verify", "--head", anchor, *ledger]) == 0
    out = capsys.readouterr().out
    assert f"The head {anchor} recorded earlier is event 2: nothing up to it was changed" in out
    db = sqlite3.connect(ledger_path)
    db.execute("DROP TRIGGER spends_no_UPDATE")
    db.execute("UPDATE spends SET epsilon = 0.21 WHERE id = 1")
    db.commit()
    db.close()
    assert main(["budget", "verify", *ledger]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"privkit budget: error: The ledger {ledger_path} was changed outside privkit: spends row 1"
    )
    assert main(["budget", "charge", "--scope", H1, *RUN, "--run-id", "r3", *ledger]) == 2
    assert "privkit writes nothing to a ledger that does not verify" in capsys.readouterr().err
    assert n_spends(ledger_path) == 2
    assert main(["budget", "verify", "--head", "xyz", *ledger]) == 2
    assert "Expected head='xyz' to be a SHA-256 hex digest" in capsys.readouterr().err
