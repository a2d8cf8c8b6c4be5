"""The privacy-budget ledger: charges checked against budgets of nested scopes, refusals that
record nothing, composition checked against the accountant and dp_accounting, real processes
racing for the last of a budget, and bad input (scopes, budgets, files that are not ledgers,
read-only ledgers). The workflow runs on an SQLite file and on PostgreSQL (tests/postgres.py)."""

from __future__ import annotations

import math
import multiprocessing
import os
import pickle
import re
import sqlite3
import sys
from pathlib import Path

import pytest
from ledger_runs import RUN, charge, eps_of, run
from postgres import admin_rows

from privkit.accounting import compose, epsilon
from privkit.budget import (
    PRV_MAX_MECHANISMS,
    BudgetExceededError,
    Ledger,
    LedgerError,
    Scope,
    default_path,
    parse_scope,
)

D = "dataset:pneumoniamnist"
H1, H2 = f"{D}/institution:h1", f"{D}/institution:h2"
MECH = (RUN["noise_multiplier"], RUN["sample_rate"], RUN["steps"])


def counts(ledger: Ledger) -> tuple[int, int, int]:
    """The rows of the budgets, spends and spend_scopes tables, as stored."""
    tables = ("budgets", "spends", "spend_scopes")
    if ledger.path is None:  # PostgreSQL: every row, as the superuser
        return tuple(
            admin_rows(ledger.location, f"SELECT count(*) FROM privkit.{t}")[0][0] for t in tables
        )
    db = sqlite3.connect(ledger.path)
    try:
        return tuple(db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables)
    finally:
        db.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Ledger:
    """The same workflow on both backends; on PostgreSQL as "tester", a steward who may charge too."""
    if request.param == "sqlite":
        return Ledger(tmp_path / "deep" / "folder" / "ledger.sqlite")
    return Ledger(request.getfixturevalue("pg_url")("tester"))


sqlite_only = pytest.mark.parametrize("ledger", ["sqlite"], indirect=True)  # the file itself


# -- accounting.compose ------------------------------------------------------------------


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_compose_of_one_run_is_its_epsilon_and_of_k_identical_runs_is_k_times_the_steps(
    accountant: str,
) -> None:
    assert compose([MECH], delta=1e-5, accountant=accountant) == eps_of(1, accountant=accountant)
    three = compose([MECH] * 3, delta=1e-5, accountant=accountant)
    assert three == pytest.approx(eps_of(3, accountant=accountant), rel=1e-9)
    assert compose([], delta=1e-5) == 0.0 and compose([(0.0, 0.1, 0)], delta=1e-5) == 0.0
    assert compose([MECH, (0.0, 0.1, 1)], delta=1e-5) == math.inf


def test_heterogeneous_compose_lies_between_max_and_sum_and_matches_dp_accounting() -> None:
    runs = [(1.0, 0.05, 100), (2.0, 0.02, 300)]
    alone = [epsilon(noise_multiplier=s, sample_rate=q, steps=n, delta=1e-5) for s, q, n in runs]
    both = compose(runs, delta=1e-5)
    assert max(alone) < both < sum(alone)
    assert compose(runs[::-1], delta=1e-5) == both
    rdp = [
        epsilon(noise_multiplier=s, sample_rate=q, steps=n, delta=1e-5, accountant="rdp")
        for s, q, n in runs
    ]
    assert max(rdp) < compose(runs, delta=1e-5, accountant="rdp") < sum(rdp)
    dp_accounting = pytest.importorskip("dp_accounting")  # an independent implementation (PLD)
    pld = dp_accounting.pld.PLDAccountant()
    for s, q, n in runs:
        event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(s))
        pld.compose(dp_accounting.SelfComposedDpEvent(event, n))
    assert both == pytest.approx(pld.get_epsilon(1e-5), rel=0.01)
    assert both >= pld.get_epsilon(1e-5)  # prv reports the upper end of its error band


@pytest.mark.parametrize(
    ("mechanisms", "kwargs", "message"),
    [
        ([(1.0, 1.5, 10)], {}, "mechanisms[0].sample_rate=1.5 in (0, 1]"),
        ([MECH, (-1.0, 0.1, 10)], {}, "mechanisms[1].noise_multiplier=-1.0 in [0, inf)"),
        ([(1.0, 0.1, 2.5)], {}, "mechanisms[0].steps=2.5 to be an integer >= 0"),
        ([(1.0, 0.1)], {}, "to be (noise_multiplier, sample_rate, steps)"),
        ([MECH], {"delta": 0.0}, "delta=0.0 in (0, 1)"),
        ([MECH], {"accountant": "gdp"}, "Unknown accountant='gdp'"),
    ],
)
def test_compose_names_bad_arguments(mechanisms: list, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        compose(mechanisms, **{"delta": 1e-5, **kwargs})


# -- scopes --------------------------------------------------------------------------------


def test_scopes_parse_print_and_nest() -> None:
    cell = parse_scope(f"{D}/institution:h-1/group:kids_0.5")
    assert str(cell) == f"{D}/institution:h-1/group:kids_0.5"
    assert cell.parent == parse_scope(f"{D}/institution:h-1") and cell.parent.parent == Scope(
        "pneumoniamnist"
    )
    assert parse_scope(D).parent is None
    assert [str(s) for s in cell.chain] == [
        D,
        f"{D}/institution:h-1",
        f"{D}/group:kids_0.5",
        str(cell),
    ]
    assert parse_scope(H1).overlaps(parse_scope(f"{D}/group:kids"))
    assert not parse_scope(H1).overlaps(parse_scope(H2))
    assert not parse_scope(D).overlaps(parse_scope("dataset:chestmnist"))


@pytest.mark.parametrize(
    "text",
    [
        "hospital:h1",
        "dataset:",
        "pneumoniamnist",
        f"{D}/group:g/institution:h",
        f"{D}/institution:h/",
        "dataset:a b",
        f"{D}/patient:1",
        f" {D}",
        42,
    ],
)
def test_unknown_scope_forms_are_named_with_the_allowed_forms(ledger: Ledger, text: object) -> None:
    with pytest.raises(
        ValueError, match=r"Unknown scope=.*expected one of: dataset:<name>, .*/group:<id>"
    ):
        ledger.set_budget(text, epsilon=1.0, delta=1e-5)
    with pytest.raises(ValueError, match="Unknown scope="):
        charge(ledger, text)
    assert counts(ledger) == (0, 0, 0)


# -- budgets, charges, refusals -------------------------------------------------------------


def test_set_charge_show_and_history(ledger: Ledger) -> None:
    ledger.set_budget(D, epsilon=4.0, delta=1e-5, actor="dpo")
    spend = charge(ledger, D, run_id="r1")
    assert spend.epsilon == eps_of(1) and spend.scopes == (D,) and spend.actor == "tester"
    spent = ledger.spent(D)
    assert spent.epsilon == eps_of(1) and spent.epsilon_sum == eps_of(1) and spent.delta_sum == 1e-5
    assert spent.remaining == pytest.approx(4.0 - eps_of(1)) and spent.n_spends == 1
    assert spent.budget.epsilon == 4.0
    assert spent.budget.actor == (
        "dpo" if ledger.path else "tester"
    )  # PostgreSQL: the database user
    charge(
        ledger, H1, run_id="r2"
    )  # an institution without a budget of its own: no limit of its own
    table = ledger.show().set_index("scope")
    assert list(table.index) == [D, H1]
    assert table.loc[D, "n_spends"] == 2 and table.loc[
        D, "spent_epsilon_composed"
    ] == pytest.approx(eps_of(2))
    assert math.isnan(table.loc[H1, "budget_epsilon"]) and math.isnan(table.loc[H1, "remaining"])
    assert [s.run_id for s in ledger.history()] == ["r1", "r2"]
    assert [s.run_id for s in ledger.history(H2)] == ["r1"]  # the dataset-wide run touched h2
    times = [s.time for s in ledger.history()]
    assert times == sorted(times)


def test_a_refused_run_charges_nothing_and_says_budget_spent_requested_remaining(
    ledger: Ledger,
) -> None:
    budget = (eps_of(1) + eps_of(2)) / 2  # room for one run, not two
    ledger.set_budget(D, epsilon=budget, delta=1e-5)
    charge(ledger, D, run_id="first")
    before = counts(ledger)
    with pytest.raises(BudgetExceededError) as refused:
        charge(ledger, D, run_id="second", delta=1e-6)  # the run's own delta does not matter
    assert counts(ledger) == before and len(ledger.history()) == 1
    err = refused.value
    assert (
        err.spent == eps_of(1)
        and err.requested == eps_of(1)
        and err.composed == pytest.approx(eps_of(2))
    )
    assert err.remaining == pytest.approx(budget - eps_of(1))
    message = str(err)
    for part in (
        D,
        f"budget epsilon={budget:g}",
        "delta=1e-05",
        f"spent {eps_of(1):.4g}",
        f"requested {eps_of(1):.4g}",
        f"remaining {budget - eps_of(1):.4g}",
        "'second'",
        "nothing was charged",
    ):
        assert part in message
    assert (
        isinstance(err, LedgerError)
        and isinstance(err, RuntimeError)
        and not isinstance(err, OSError)
    )
    copy = pickle.loads(pickle.dumps(err))  # crosses process boundaries intact
    assert str(copy) == message and copy.remaining == err.remaining and copy.budget == err.budget


def test_a_run_without_noise_is_refused_by_any_budget_and_recorded_without_one(
    ledger: Ledger,
) -> None:
    ledger.set_budget(H1, epsilon=100.0, delta=1e-5)
    with pytest.raises(BudgetExceededError, match="requested inf"):
        charge(ledger, H1, noise_multiplier=0.0)
    assert charge(ledger, H2, noise_multiplier=0.0).epsilon == math.inf  # no budget: recorded
    assert ledger.spent(H2).epsilon == math.inf
    with pytest.raises(ValueError, match=r"epsilon=100.0 >= inf"):
        ledger.set_budget(H2, epsilon=100.0, delta=1e-5)  # that data was used without privacy


def test_a_dataset_spend_counts_against_an_institution_budget(ledger: Ledger) -> None:
    ledger.set_budget(H1, epsilon=(eps_of(1) + eps_of(2)) / 2, delta=1e-5)
    charge(ledger, D)  # fits h1's budget, and touches h1's patients
    with pytest.raises(BudgetExceededError, match=f"budget of {H1} exceeded"):
        charge(ledger, H1)
    with pytest.raises(BudgetExceededError, match=f"budget of {H1} exceeded"):
        charge(ledger, D)  # touches h1 again
    charge(ledger, H2)  # h2 has no budget, and the dataset none
    assert ledger.spent(H1).epsilon == eps_of(1) and ledger.spent(H2).epsilon == pytest.approx(
        eps_of(2)
    )


def test_spends_on_two_institutions_do_not_add_up(ledger: Ledger) -> None:
    ledger.set_budget(D, epsilon=(eps_of(1) + eps_of(2)) / 2, delta=1e-5)  # one run per patient
    charge(ledger, H1)
    charge(ledger, H2)  # other patients: parallel composition
    charge(ledger, f"{D}/institution:h3")  # a new institution's patients have spent nothing
    assert ledger.spent(D).epsilon == eps_of(1) and ledger.spent(D).n_spends == 3
    for scope in (H1, D, f"{D}/group:kids"):  # each reaches patients of h1 (kids at h1 too)
        with pytest.raises(BudgetExceededError, match=f"budget of {D} exceeded"):
            charge(ledger, scope)
    assert counts(ledger)[1] == 3


def test_a_group_across_institutions_meets_each_institution(ledger: Ledger) -> None:
    ledger.set_budget(H1, epsilon=(eps_of(1) + eps_of(2)) / 2, delta=1e-5)
    charge(ledger, f"{D}/group:kids")  # includes the kids of h1
    charge(ledger, f"{H1}/group:adults")  # disjoint from the kids
    with pytest.raises(BudgetExceededError, match=f"budget of {H1} exceeded"):
        charge(ledger, f"{H1}/group:kids")
    with pytest.raises(BudgetExceededError, match=f"budget of {H1} exceeded"):
        charge(ledger, H1)
    charge(ledger, f"{D}/institution:h2/group:kids")  # h2 has no budget


def test_a_group_budget_binds_runs_on_wider_scopes(ledger: Ledger) -> None:
    kids = f"{D}/group:kids"
    ledger.set_budget(kids, epsilon=(eps_of(1) + eps_of(2)) / 2, delta=1e-5)
    charge(ledger, D)  # all patients, kids included
    with pytest.raises(BudgetExceededError, match=f"budget of {kids} exceeded"):
        charge(ledger, H1)  # reaches the kids of h1 a second time
    charge(ledger, f"{H1}/group:adults")
    assert ledger.spent(kids).epsilon == eps_of(1)
    assert ledger.spent(f"{H1}/group:adults").epsilon == pytest.approx(eps_of(2))


def test_one_run_listed_on_overlapping_scopes_counts_once(ledger: Ledger) -> None:
    spend = charge(ledger, D, H1, H1)
    assert spend.scopes == (D, H1) and counts(ledger) == (0, 1, 2)
    assert ledger.spent(H1).epsilon == eps_of(1) and ledger.spent(H1).n_spends == 1


def test_k_identical_runs_compose_to_the_accountant_for_k_times_the_steps(ledger: Ledger) -> None:
    ledger.set_budget(D, epsilon=50.0, delta=1e-5)
    for i in range(4):
        charge(ledger, D, run_id=f"r{i}")
    spent = ledger.spent(D)
    assert spent.epsilon == pytest.approx(eps_of(4), rel=1e-9)  # 5.2, where adding gives 10.9
    assert spent.epsilon_sum == pytest.approx(4 * eps_of(1)) and spent.delta_sum == pytest.approx(
        4e-5
    )
    assert spent.epsilon_sum > 1.5 * spent.epsilon
    assert ledger.spent(D, accountant="rdp").epsilon == pytest.approx(eps_of(4, accountant="rdp"))


def test_many_different_runs_are_composed_with_rdp_a_valid_bound(ledger: Ledger) -> None:
    sigmas = [1.0 + 0.1 * i for i in range(PRV_MAX_MECHANISMS + 1)]
    for sigma in sigmas:
        charge(ledger, D, noise_multiplier=sigma)
    runs = [(sigma, 0.05, 50) for sigma in sigmas]
    assert ledger.spent(D).epsilon == compose(runs, delta=1e-5, accountant="rdp")
    assert ledger.spent(D).epsilon < ledger.spent(D).epsilon_sum


def test_composed_epsilon_is_reported_at_the_budget_delta(ledger: Ledger) -> None:
    charge(ledger, H1, delta=1e-6)
    assert ledger.spent(H1).delta == 1e-6  # no budget: the runs' smallest delta
    ledger.set_budget(D, epsilon=10.0, delta=1e-7)
    assert ledger.spent(H1).delta == 1e-7 and ledger.spent(H1).epsilon == eps_of(1, delta=1e-7)
    ledger.set_budget(H1, epsilon=10.0, delta=1e-5)
    assert ledger.spent(H1).epsilon == eps_of(1) and ledger.spent(H1).remaining == pytest.approx(
        10 - eps_of(1)
    )


def test_budgets_are_kept_and_never_lowered_below_what_was_spent(ledger: Ledger) -> None:
    ledger.set_budget(D, epsilon=8.0, delta=1e-5)
    charge(ledger, H1)
    charge(ledger, H1)
    with pytest.raises(
        ValueError, match=rf"epsilon=3.0 >= {eps_of(2):.4g}, what {D} has already spent"
    ):
        ledger.set_budget(D, epsilon=3.0, delta=1e-5)
    ledger.set_budget(D, epsilon=6.0, delta=1e-5)
    assert [b.epsilon for b in ledger.budgets()] == [8.0, 6.0]
    assert ledger.spent(D).budget.epsilon == 6.0


@pytest.mark.parametrize(
    ("epsilon", "delta", "message"),
    [
        (0.0, 1e-5, "epsilon=0.0 in (0, inf)"),
        (-1.0, 1e-5, "epsilon=-1.0 in (0, inf)"),
        (math.inf, 1e-5, "epsilon=inf in (0, inf)"),
        (math.nan, 1e-5, "epsilon=nan"),
        (1.0, 0.0, "delta=0.0 in (0, 1)"),
        (1.0, 1.0, "delta=1.0 in (0, 1)"),
        (1.0, -1e-5, "delta=-1e-05"),
    ],
)
def test_bad_budgets_are_named_and_record_nothing(
    ledger: Ledger, epsilon: float, delta: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ledger.set_budget(D, epsilon=epsilon, delta=delta)
    assert counts(ledger) == (0, 0, 0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"steps": -1}, "steps=-1"),
        ({"sample_rate": 0.0}, "sample_rate=0.0"),
        ({"run_id": ""}, "run_id=''"),
        ({"accountant": "gdp"}, "accountant='gdp'"),
        ({"delta": 2.0}, "delta=2.0"),
    ],
)
def test_bad_charges_are_named_and_record_nothing(
    ledger: Ledger, overrides: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        charge(ledger, D, **overrides)
    with pytest.raises(ValueError, match="non-empty list"):
        ledger.charge(D, run(), run_id="r", actor="a")  # a string, not a list of scopes
    with pytest.raises(ValueError, match="privkit.mechanism.Mechanism"):
        ledger.charge([D], RUN, run_id="r", actor="a")  # plain values, not a planned mechanism
    assert counts(ledger) == (0, 0, 0)


def test_the_ledger_computes_the_epsilon_itself(ledger: Ledger) -> None:
    # A caller who writes a small epsilon into its mechanism is charged what it spends.
    ledger.set_budget(Scope("pneumoniamnist"), epsilon=3.0, delta=1e-5)  # a Scope, or its text
    spend = ledger.charge([Scope("pneumoniamnist")], run(epsilon=0.01), run_id="r", actor="a")
    assert spend.epsilon == eps_of(1) and spend.scopes == (D,)
    assert ledger.spent(Scope("pneumoniamnist")).epsilon == ledger.spent(D).epsilon == eps_of(1)
    with pytest.raises(BudgetExceededError):
        charge(ledger, D, epsilon=0.01)


# -- the file: audit trail, not-a-ledger, read-only ----------------------------------------


@sqlite_only
def test_the_audit_trail_refuses_update_and_delete(ledger: Ledger) -> None:
    ledger.set_budget(D, epsilon=4.0, delta=1e-5)
    charge(ledger, D)
    db = sqlite3.connect(ledger.path)
    for statement in (
        "UPDATE spends SET epsilon = 0",
        "DELETE FROM spends",
        "DELETE FROM spend_scopes",
        "UPDATE spend_scopes SET scope = 'x'",
        "UPDATE budgets SET epsilon = 99",
        "DELETE FROM budgets",
    ):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute(statement)
    db.close()
    assert counts(ledger) == (1, 1, 1) and ledger.history()[0].epsilon == eps_of(1)


def test_a_file_that_is_not_a_ledger_is_named_and_left_unchanged(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(os.urandom(4096))
    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE patients (name TEXT)")
    db.commit()
    db.close()
    for path, why in (
        (junk, "not an SQLite database"),
        (other, "an SQLite database but not a privkit ledger"),
    ):
        before = path.read_bytes()
        with pytest.raises(LedgerError, match=f"{path}.*{why}.*left unchanged"):
            Ledger(path)
        assert path.read_bytes() == before
    with pytest.raises(LedgerError, match=str(tmp_path)):
        Ledger(tmp_path)  # a folder


@sqlite_only
def test_a_newer_schema_is_refused(ledger: Ledger) -> None:
    db = sqlite3.connect(ledger.path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(LedgerError, match="schema version 99.*Upgrade privkit"):
        Ledger(ledger.path)


def _assert_reads_work_and_writes_fail(path: Path, ledger: Ledger) -> None:
    assert ledger.spent(D).n_spends == 1 and len(ledger.history()) == 1 and len(ledger.show()) == 1
    with pytest.raises(
        LedgerError, match=f"Cannot write to the ledger {path}.*read-only.*Nothing was changed"
    ):
        ledger.set_budget(D, epsilon=9.0, delta=1e-5)
    with pytest.raises(LedgerError, match=f"Cannot write to the ledger {path}"):
        charge(ledger, D)
    assert counts(ledger) == (1, 1, 1)


@sqlite_only
def test_a_ledger_opened_read_only_reads_and_refuses_writes(ledger: Ledger) -> None:
    ledger.set_budget(D, epsilon=9.0, delta=1e-5)
    charge(ledger, D)
    _assert_reads_work_and_writes_fail(ledger.path, Ledger(ledger.path, read_only=True))
    with pytest.raises(LedgerError, match="No ledger at .*missing.sqlite"):
        Ledger(ledger.path.parent / "missing.sqlite", read_only=True)
    assert not (ledger.path.parent / "missing.sqlite").exists()


@sqlite_only
@pytest.mark.skipif(
    os.geteuid() == 0,
    reason="root writes through permission bits; for root, a read-only "
    "ledger is a read-only mount (tested above), or one opened with read_only=True",
)
def test_a_ledger_whose_file_and_folder_are_read_only_reads_and_refuses_writes(
    ledger: Ledger,
) -> None:
    ledger.set_budget(D, epsilon=9.0, delta=1e-5)
    charge(ledger, D)
    folder = ledger.path.parent
    for mode_file, mode_folder in ((0o444, 0o755), (0o644, 0o555)):  # the file; then the folder
        ledger.path.chmod(mode_file)
        folder.chmod(mode_folder)
        try:
            _assert_reads_work_and_writes_fail(ledger.path, Ledger(ledger.path))
        finally:
            folder.chmod(0o755)
            ledger.path.chmod(0o644)


def _on_a_read_only_mount(path: str, conn) -> None:
    """In a forked child: a private mount namespace where the ledger's folder is read-only."""
    import ctypes
    import subprocess

    if ctypes.CDLL(None, use_errno=True).unshare(0x00020000) != 0:  # CLONE_NEWNS
        return conn.send({"skip": f"unshare(CLONE_NEWNS): {os.strerror(ctypes.get_errno())}"})
    folder = os.path.dirname(path)
    for args in (
        ["--make-rprivate", "/"],
        ["--bind", folder, folder],
        ["-o", "remount,ro,bind", folder],
    ):
        done = subprocess.run(
            ["mount", *args], capture_output=True, text=True
        )  # in this namespace only
        if done.returncode != 0:
            return conn.send({"skip": f"mount {' '.join(args)}: {done.stderr.strip()}"})
    ledger, out = Ledger(path), {}
    out["reads"] = (ledger.spent(D).n_spends, len(ledger.history()), len(ledger.show()))
    writes = {
        "set": lambda: ledger.set_budget(D, epsilon=9.0, delta=1e-5),
        "charge": lambda: charge(ledger, D),
    }
    for name, write in writes.items():
        try:
            write()
        except LedgerError as error:
            out[name] = str(error)
    conn.send(out)


@sqlite_only
@pytest.mark.skipif(
    os.geteuid() != 0 or not sys.platform.startswith("linux"), reason="needs root on Linux to mount"
)
def test_a_ledger_on_a_read_only_file_system_reads_and_refuses_writes(ledger: Ledger) -> None:
    # Root ignores permission bits; a read-only mount (a snapshot, a read-only volume) is what
    # stops root. Made in a forked child's own mount namespace: nothing outside it changes.
    ledger.set_budget(D, epsilon=9.0, delta=1e-5)
    charge(ledger, D)
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe()
    process = context.Process(target=_on_a_read_only_mount, args=(str(ledger.path), child))
    process.start()
    process.join(timeout=60)
    out = parent.recv() if parent.poll() else {"skip": f"child exited with {process.exitcode}"}
    if "skip" in out:
        pytest.skip(f"cannot make a read-only mount here ({out['skip']})")
    assert out["reads"] == (1, 1, 1)
    for name in ("set", "charge"):
        assert (
            f"Cannot write to the ledger {ledger.path}" in out[name]
            and "Nothing was changed" in out[name]
        )
    assert counts(ledger) == (1, 1, 1)
    charge(ledger, D)  # outside the child's namespace the folder stayed writable


def test_the_default_path_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PRIVKIT_LEDGER", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_path() == tmp_path / "xdg" / "privkit" / "ledger.sqlite"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_path() == tmp_path / "home" / ".local" / "share" / "privkit" / "ledger.sqlite"
    monkeypatch.setenv("PRIVKIT_LEDGER", str(tmp_path / "env.sqlite"))
    assert Ledger().path == tmp_path / "env.sqlite" and (tmp_path / "env.sqlite").exists()


# -- concurrency: real processes -----------------------------------------------------------


def _race(path: str, barrier, i: int) -> None:
    ledger = Ledger(path)
    barrier.wait()
    try:
        ledger.charge([D if i % 2 else H1], run(), run_id=f"p{i}", actor=f"process {os.getpid()}")
    except BudgetExceededError:
        sys.exit(3)
    sys.exit(0)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
@sqlite_only
def test_processes_racing_for_the_last_of_a_budget_never_overspend(ledger: Ledger) -> None:
    # fork: separate processes with their own SQLite connections, started in milliseconds
    # (spawn would import torch in each, ~3 s); the barrier makes them charge at once.
    budget = (eps_of(2) + eps_of(3)) / 2  # room for exactly 2 runs
    ledger.set_budget(D, epsilon=budget, delta=1e-5)
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(8)
    processes = [
        context.Process(target=_race, args=(str(ledger.path), barrier, i)) for i in range(8)
    ]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=60)
    codes = sorted(p.exitcode for p in processes)
    assert codes == [0, 0] + [3] * 6
    assert counts(ledger) == (1, 2, 2)
    assert ledger.spent(D).epsilon == pytest.approx(eps_of(2)) and ledger.spent(D).epsilon <= budget
