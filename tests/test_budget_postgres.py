"""The ledger in a real PostgreSQL server (tests/postgres.py starts one): roles that the database enforces,
played by a researcher with plain SQL; the chain the database keeps, against privkit's own hashing; processes
racing for the last of a budget, a client killed mid-charge, a lost connection; a ledger moved from SQLite."""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from postgres import admin_rows
from privkit import _hashchain, _ledger_postgres
from privkit.accounting import epsilon
from privkit.budget import (
    BudgetExceededError,
    Ledger,
    LedgerError,
    LedgerTamperedError,
    init,
    migrate,
)
from privkit.cli import main

psycopg = pytest.importorskip("psycopg", reason="psycopg 3 is not installed (pip install -e '.[dev]')")

D, C = "dataset:pneumoniamnist", "dataset:chestmnist"
H1, H2 = f"{D}/institution:h1", f"{D}/institution:h2"
RUN = dict(noise_multiplier=1.0, sample_rate=0.05, steps=50, delta=1e-5)  # epsilon ~2.68


def eps_of(k: int) -> float:
    """Epsilon of k runs of RUN, from the accountant run once for k times the steps."""
    return epsilon(noise_multiplier=1.0, sample_rate=0.05, steps=50 * k, delta=1e-5)


def charge(ledger: Ledger, *scopes: str, run_id: str = "run", **overrides):
    return ledger.charge(list(scopes), run_id=run_id, actor="tester", **{**RUN, **overrides})


def sql(url: str, statement: str, params: tuple = (), *, serializable: bool = True) -> list[tuple]:
    """``statement`` run by the user of ``url`` with plain SQL, as psql would, in one transaction."""
    with psycopg.connect(url) as db:
        if serializable:
            db.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        cursor = db.execute(statement, params or None)
        return cursor.fetchall() if cursor.description else []


def count(ledger: Ledger, table: str) -> int:
    return admin_rows(ledger.location, f"SELECT count(*) FROM privkit.{table}")[0][0]


# -- the hash chain: the database hashes as privkit does ----------------------------------------------------

NASTY = ["", "plain", 'quote " and \\ backslash', "new\nline\ttab\rreturn\bback\fform", "\x01\x1f\x7f",
         "é ü ß", "日本語", "emoji 😀 and 𝄞", "\u2028\u2029", "a" * 300]  # fmt: skip
FLOATS = [0.0, -0.0, 5e-324, 2.2250738585072014e-308, 1e-310, 1.0, -1.5, 0.1, 1e-5, 256 / 4708, 1e300,
          math.inf, -math.inf, math.nan]  # fmt: skip


def test_the_database_serialises_strings_and_floats_as_python_does(pg_url: Callable[[str], str]) -> None:
    # The reference: json.dumps(ensure_ascii=True) and float.hex, which privkit._hashchain hashes.
    url = pg_url("tester")
    location = Ledger(url).location
    for text in NASTY:
        assert admin_rows(location, "SELECT privkit._json(%s)", (text,))[0][0] == json.dumps(text), repr(text)
    for x in FLOATS:
        assert admin_rows(location, "SELECT privkit._hex(%s::float8)", (x,))[0][0] == x.hex(), x


def test_every_event_the_database_appends_hashes_as_privkit_hashes_it(pg_url: Callable[[str], str]) -> None:
    ledger = Ledger(pg_url("tester"))
    registered = ledger.register_dataset("mimic-cxr", size=377_110, description=NASTY[3] + NASTY[7])
    budget = ledger.set_budget(D, epsilon=4.0, delta=1e-5)
    raised = ledger.set_budget(D, epsilon=8.0, delta=1e-5, raise_budget=True, reason="DPO ticket 42: « oui »")
    spends = [charge(ledger, H1, f"{D}/group:kids_0.5", run_id='r1 "quoted" ✓', sample_rate=256 / 4708),
              charge(ledger, "dataset:mimic-cxr/institution:bidmc", noise_multiplier=0.0, run_id="open")]
    events = [registered, budget, raised, *spends]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5] and spends[1].epsilon == math.inf
    for before, event in zip([None, *events], events):
        assert event.hash == _hashchain.event_hash(event)  # privkit's hash of what the database stored
        assert event.prev == (before.hash if before else _hashchain.GENESIS)
        assert event.actor == "tester"  # the database user, not the actor privkit was told
    assert ledger.events() == events  # read back exactly: floats, text, the order of scopes
    assert ledger.verify().head == spends[-1].hash


# -- roles: what a researcher may do, enforced by the database (plain SQL, not privkit) ----------------------


def _hospital(pg_url: Callable[[str], str]) -> Ledger:
    """A steward's ledger: budgets on both datasets, and a spend on each by its researcher."""
    steward = Ledger(pg_url("steward"))
    steward.set_budget(D, epsilon=4.0, delta=1e-5)
    steward.set_budget(C, epsilon=4.0, delta=1e-5)
    charge(Ledger(pg_url("alice")), H1, run_id="alice-1")
    charge(Ledger(pg_url("bob")), C, run_id="bob-1")
    return steward


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ("UPDATE privkit.spends SET epsilon = 0.01", "permission denied for table spends"),
        ("DELETE FROM privkit.spends", "permission denied for table spends"),
        ("DELETE FROM privkit.spend_scopes", "permission denied for table spend_scopes"),
        ("TRUNCATE privkit.spends CASCADE", "permission denied for table spends"),
        ("INSERT INTO privkit.spends SELECT * FROM privkit.spends", "permission denied for table spends"),
        ("UPDATE privkit.budgets SET epsilon = 100", "permission denied for table budgets"),
        ("INSERT INTO privkit.budgets (id, time, scope, epsilon, delta, actor, seq, prev, hash) "
         "VALUES (9, 't', 'dataset:pneumoniamnist', 100, 0.1, 'alice', 9, '', '')", "permission denied for table budgets"),
        ("SELECT privkit.set_budget('dataset:pneumoniamnist', 100, 1e-5, 'I need more')",
         "permission denied for function set_budget"),
        ("SELECT privkit.grant_dataset('chestmnist', 'alice')", "permission denied for function grant_dataset"),
        ("SELECT privkit.import_budget(9, 't', 'dataset:pneumoniamnist', 100, 0.1, 'a', NULL, 9, '', '')",
         "permission denied for function import_budget"),
        ("SELECT privkit._advance('native', 9, 'x')", "permission denied for function _advance"),
        ("ALTER TABLE privkit.spends DISABLE TRIGGER spends_append_only", "must be owner of table spends"),
        ("ALTER TABLE privkit.spends DISABLE ROW LEVEL SECURITY", "must be owner of table spends"),
        ("SET ROLE privkit_owner", "permission denied to set role"),
        ("SET ROLE privkit_steward", "permission denied to set role"),
        ("SELECT privkit.charge(ARRAY['dataset:chestmnist'], 1, 0.05, 50, 1e-5, 'prv', 2.7, 'r', 'secure', "
         "'[]'::jsonb)", "the dataset chestmnist is not granted to alice"),
    ],
)  # fmt: skip
def test_a_researcher_is_refused_by_the_database(pg_url: Callable[[str], str], statement: str, message: str) -> None:
    steward = _hospital(pg_url)
    before = [admin_rows(steward.location, f"SELECT * FROM privkit.{t} ORDER BY 1") for t in ("budgets", "spends")]
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match=message):
        sql(pg_url("alice"), statement)
    assert [admin_rows(steward.location, f"SELECT * FROM privkit.{t} ORDER BY 1") for t in ("budgets", "spends")] == before
    assert steward.verify().events == 4


def test_a_researcher_reads_only_the_datasets_granted_to_them(pg_url: Callable[[str], str]) -> None:
    steward = _hospital(pg_url)
    alice = pg_url("alice")
    for table in ("spends", "budgets", "spend_scopes", "spend_checks"):
        assert count(steward, table) == 2  # one per dataset, as stored
    assert [r[0] for r in sql(alice, "SELECT run_id FROM privkit.spends")] == ["alice-1"]
    assert [r[0] for r in sql(alice, "SELECT scope FROM privkit.budgets")] == [D]
    assert sql(alice, "SELECT count(*) FROM privkit.spend_scopes WHERE scope LIKE 'dataset:chestmnist%'") == [(0,)]
    assert sql(alice, "SELECT dataset, grantee FROM privkit.grants") == [("pneumoniamnist", "alice")]
    ledger = Ledger(alice)
    assert [s.run_id for s in ledger.history()] == ["alice-1"] and list(ledger.show()["scope"]) == [D, H1]
    for read in (ledger.history, ledger.spent, ledger.show, ledger.events):
        with pytest.raises(LedgerError, match="The dataset 'chestmnist' is not granted to alice"):
            read(C)
    with pytest.raises(LedgerError, match="not granted to alice"):
        charge(ledger, C)
    assert ledger.verify() == steward.verify()  # the database checked the events alice cannot see
    steward.grant("pneumoniamnist", "alice", revoke=True)
    assert Ledger(alice).history() == []
    with pytest.raises(LedgerError, match="not granted to alice"):
        charge(Ledger(alice), H1)
    assert count(steward, "spends") == 2


def test_the_recorded_actor_is_the_database_user(pg_url: Callable[[str], str]) -> None:
    ledger = Ledger(pg_url("alice"))
    spend = ledger.charge([H1], run_id="r", actor="the steward, honest", **RUN)
    assert spend.actor == "alice" and ledger.history()[0].actor == "alice"
    assert admin_rows(ledger.location, "SELECT actor FROM privkit.spends") == [("alice",)]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):  # SET ROLE changes current_user, not session_user
        sql(pg_url("alice"), "SET ROLE privkit_researcher; SET SESSION AUTHORIZATION steward")


def test_nobody_rewrites_a_spend_but_a_superuser_and_verify_finds_it(pg_url: Callable[[str], str]) -> None:
    steward = _hospital(pg_url)
    location, original = steward.location, steward.history()[0]
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only: UPDATE on spends refused"):
        admin_rows(location, "UPDATE privkit.spends SET epsilon = 0.01")  # even a superuser, triggers on
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only: TRUNCATE on spend_checks"):
        admin_rows(location, "TRUNCATE privkit.spend_checks")
    admin_rows(location, "ALTER TABLE privkit.spends DISABLE TRIGGER spends_append_only; "
               "UPDATE privkit.spends SET noise_multiplier = 20, epsilon = 0.01 WHERE run_id = 'alice-1'")
    with pytest.raises(LedgerTamperedError, match=r"spends row 1 \(event 3, run 'alice-1'\): its content does not"):
        steward.verify()
    with pytest.raises(LedgerTamperedError, match=r"spends row 1 \(event 3\): its content does not match"):
        charge(Ledger(pg_url("alice")), H1)  # the database checks the chain before every write
    with pytest.raises(LedgerTamperedError, match=r"spends row 1 \(event 3\)"):
        Ledger(pg_url("bob")).verify()  # bob cannot see alice's spend; the database tells him
    admin_rows(location, "UPDATE privkit.spends SET noise_multiplier = 1, epsilon = %s WHERE run_id = 'alice-1'",
               (original.epsilon,))  # as it was, the trigger still off
    with pytest.raises(LedgerTamperedError, match=r"triggers \['spends_append_only'\] were disabled"):
        steward.verify()
    admin_rows(location, "ALTER TABLE privkit.spends ENABLE TRIGGER spends_append_only")
    assert steward.verify().events == 4
