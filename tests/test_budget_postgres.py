"""The ledger in a real PostgreSQL server (tests/postgres.py starts one): roles that the database enforces,
played by a researcher with plain SQL; the chain the database keeps, against privkit's own hashing; processes
racing for the last of a budget, a client killed mid-charge, a lost connection; a ledger moved from SQLite."""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import pickle
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from ledger_runs import charge, eps_of, run
from postgres import admin_rows

from privkit import _hashchain, _ledger_postgres
from privkit.budget import (
    BudgetExceededError,
    Ledger,
    LedgerError,
    LedgerTamperedError,
    init,
    migrate,
)
from privkit.cli import main

psycopg = pytest.importorskip(
    "psycopg", reason="psycopg 3 is not installed (pip install -e '.[dev]')"
)

D, C = "dataset:pneumoniamnist", "dataset:chestmnist"
H1, H2 = f"{D}/institution:h1", f"{D}/institution:h2"
URL = Callable[[str], str]  # pg_url: a user's URL of this test's ledger


def sql(url: str, statement: str, params: tuple = (), *, serializable: bool = True) -> list[tuple]:
    """``statement`` run by the user of ``url`` with plain SQL, as psql would, in one transaction."""
    with psycopg.connect(url) as db:
        if serializable:
            db.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        cursor = db.execute(statement, params or None)
        return cursor.fetchall() if cursor.description else []


def count(ledger: Ledger, table: str) -> int:
    return admin_rows(ledger.location, f"SELECT count(*) FROM privkit.{table}")[0][0]


def stored(ledger: Ledger) -> list[list[tuple]]:
    """Every row of the budgets and spends, as the superuser reads them."""
    tables = ("budgets", "spends")
    return [admin_rows(ledger.location, f"SELECT * FROM privkit.{t} ORDER BY 1") for t in tables]


# -- the hash chain: the database hashes as privkit does ----------------------------------------------------

NASTY = [
    "",
    "plain",
    'quote " and \\ backslash',
    "new\nline\ttab\rreturn\bback\fform",
    "\x01\x1f\x7f",
    "é ü ß",
    "日本語",
    "emoji 😀 and 𝄞",
    "\u2028\u2029",
    "a" * 300,
]
FLOATS = [
    0.0,
    -0.0,
    5e-324,
    2.2250738585072014e-308,
    1e-310,
    1.0,
    -1.5,
    0.1,
    1e-5,
    256 / 4708,
    1e300,
    math.inf,
    -math.inf,
    math.nan,
]


def test_the_database_serialises_strings_and_floats_as_python_does(pg_url: URL) -> None:
    # The reference: json.dumps(ensure_ascii=True) and float.hex, which privkit._hashchain hashes.
    location = Ledger(pg_url("tester")).location
    for text in NASTY:
        assert admin_rows(location, "SELECT privkit._json(%s)", (text,))[0][0] == json.dumps(
            text
        ), repr(text)
    for x in FLOATS:
        assert admin_rows(location, "SELECT privkit._hex(%s::float8)", (x,))[0][0] == x.hex(), x


def test_every_event_the_database_appends_hashes_as_privkit_hashes_it(pg_url: URL) -> None:
    ledger = Ledger(pg_url("tester"))
    registered = ledger.register_dataset("mimic-cxr", size=377_110, description=NASTY[3] + NASTY[7])
    budget = ledger.set_budget(D, epsilon=4.0, delta=1e-5)
    raised = ledger.set_budget(
        D, epsilon=8.0, delta=1e-5, raise_budget=True, reason="ticket 42: « oui »"
    )
    spends = [
        charge(ledger, H1, f"{D}/group:kids_0.5", run_id='r1 "quoted" ✓', sample_rate=256 / 4708),
        charge(ledger, "dataset:mimic-cxr/institution:bidmc", noise_multiplier=0.0, run_id="open"),
    ]
    events = [registered, budget, raised, *spends]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5] and spends[1].epsilon == math.inf
    for before, event in zip([None, *events], events):
        assert event.hash == _hashchain.event_hash(
            event
        )  # privkit's hash of what the database stored
        assert event.prev == (before.hash if before else _hashchain.GENESIS)
        assert event.actor == "tester"  # the database user, not the actor privkit was told
    assert ledger.events() == events  # read back exactly: floats, text, the order of scopes
    assert ledger.verify().head == spends[-1].hash


# -- roles: what a researcher may do, enforced by the database (plain SQL, not privkit) ----------------------


def _hospital(pg_url: URL) -> Ledger:
    """A steward's ledger: budgets on both datasets, and a spend on each by its researcher (events 1-4)."""
    steward = Ledger(pg_url("steward"))
    steward.set_budget(D, epsilon=4.0, delta=1e-5)
    steward.set_budget(C, epsilon=4.0, delta=1e-5)
    charge(Ledger(pg_url("alice")), H1, run_id="alice-1")
    charge(Ledger(pg_url("bob")), C, run_id="bob-1")
    return steward


@pytest.fixture(scope="module")
def hospital(postgres_cluster) -> tuple[Ledger, URL]:
    """One hospital for every refusal below (each checks that nothing changed): the steward's ledger, and the
    URL of each user."""
    name = postgres_cluster.new_database()
    url = lambda user: postgres_cluster.url(user, name)  # noqa: E731
    return _hospital(url), url


DENIED = "permission denied for {}"
FORGED_BUDGET = "(9, 't', 'dataset:pneumoniamnist', 100, 0.1, 'alice', 9, '', '')"


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ("UPDATE privkit.spends SET epsilon = 0.01", DENIED.format("table spends")),
        ("DELETE FROM privkit.spends", DENIED.format("table spends")),
        ("DELETE FROM privkit.spend_scopes", DENIED.format("table spend_scopes")),
        ("TRUNCATE privkit.spends CASCADE", DENIED.format("table spends")),
        ("INSERT INTO privkit.spends SELECT * FROM privkit.spends", DENIED.format("table spends")),
        ("UPDATE privkit.budgets SET epsilon = 100", DENIED.format("table budgets")),
        (
            "INSERT INTO privkit.budgets (id, time, scope, epsilon, delta, actor, seq, prev, hash) VALUES "
            + FORGED_BUDGET,
            DENIED.format("table budgets"),
        ),
        (
            "SELECT privkit.set_budget('dataset:pneumoniamnist', 100, 1e-5, 'I need more')",
            DENIED.format("function set_budget"),
        ),
        (
            "SELECT privkit.grant_dataset('chestmnist', 'alice')",
            DENIED.format("function grant_dataset"),
        ),
        (
            "SELECT privkit.import_budget"
            + FORGED_BUDGET.replace("'alice', 9", "'alice', NULL, 9"),
            DENIED.format("function import_budget"),
        ),
        ("SELECT privkit._advance('native', 9, 'x')", DENIED.format("function _advance")),
        (
            "ALTER TABLE privkit.spends DISABLE TRIGGER spends_append_only",
            "must be owner of table spends",
        ),
        ("ALTER TABLE privkit.spends DISABLE ROW LEVEL SECURITY", "must be owner of table spends"),
        ("SET ROLE privkit_owner", "permission denied to set role"),
        ("SET ROLE privkit_steward", "permission denied to set role"),
        ("SET SESSION AUTHORIZATION steward", "permission denied to set session authorization"),
        (
            "SELECT privkit.charge(ARRAY['dataset:chestmnist'], 1, 0.05, 50, 1e-5, 'prv', 2.7, 'r', "
            "'secure', '[]'::jsonb)",
            "the dataset chestmnist is not granted to alice",
        ),
    ],
)
def test_a_researcher_is_refused_by_the_database(
    hospital: tuple, statement: str, message: str
) -> None:
    steward, pg_url = hospital
    before = stored(steward)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match=message):
        sql(pg_url("alice"), statement)
    assert stored(steward) == before and steward.verify().events == 4


def test_a_researcher_reads_only_the_datasets_granted_to_them(pg_url: URL) -> None:
    steward = _hospital(pg_url)
    alice = pg_url("alice")
    for table in ("spends", "budgets", "spend_scopes", "spend_checks"):
        assert count(steward, table) == 2  # one per dataset, as stored
    assert sql(alice, "SELECT run_id FROM privkit.spends") == [("alice-1",)]
    assert sql(alice, "SELECT scope FROM privkit.budgets") == [(D,)]
    assert sql(
        alice, "SELECT count(*) FROM privkit.spend_scopes WHERE scope LIKE %s", (C + "%",)
    ) == [(0,)]
    assert sql(alice, "SELECT dataset, grantee FROM privkit.grants") == [
        ("pneumoniamnist", "alice")
    ]
    ledger = Ledger(alice)
    assert [s.run_id for s in ledger.history()] == ["alice-1"] and list(ledger.show()["scope"]) == [
        D,
        H1,
    ]
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


def test_a_spend_on_two_datasets_is_seen_by_the_researchers_of_each(pg_url: URL) -> None:
    steward = _hospital(pg_url)
    steward.grant("chestmnist", "alice")
    both = charge(
        Ledger(pg_url("alice")), H2, C, run_id="both"
    )  # checked against the budgets of both
    assert (
        count(steward, "spend_checks") == 2 + 2
    )  # its own: D's budget for h2, C's for its patients
    bob = Ledger(pg_url("bob"))
    assert [s.run_id for s in bob.history()] == ["bob-1", "both"] and bob.history()[1] == both
    assert (
        bob.verify() == steward.verify()
    )  # audits the claims it can see, the rest is the steward's


def test_the_recorded_actor_is_the_database_user(pg_url: URL) -> None:
    ledger = Ledger(pg_url("alice"))
    spend = ledger.charge([H1], run(), run_id="r", actor="the steward, honest")
    assert spend.actor == "alice" and ledger.history()[0].actor == "alice"
    with psycopg.connect(
        pg_url("alice")
    ) as db:  # SET ROLE changes current_user; the actor is session_user
        db.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        db.execute("SET ROLE privkit_researcher")
        charged = db.execute(
            "SELECT actor FROM privkit.charge(%s::text[], 1, 0.05, 50, 1e-5, 'prv', 2.7, "
            "'r2', 'secure', '[]'::jsonb)",
            ([H2],),
        ).fetchall()
    assert charged == [("alice",)]
    assert admin_rows(ledger.location, "SELECT actor FROM privkit.spends") == [
        ("alice",),
        ("alice",),
    ]


def test_nobody_rewrites_a_spend_but_a_superuser_and_verify_finds_it(pg_url: URL) -> None:
    steward = _hospital(pg_url)
    location, original = steward.location, steward.history()[0]
    with pytest.raises(
        psycopg.errors.InsufficientPrivilege, match="append-only: UPDATE on spends refused"
    ):
        admin_rows(
            location, "UPDATE privkit.spends SET epsilon = 0.01"
        )  # even a superuser, triggers on
    with pytest.raises(
        psycopg.errors.InsufficientPrivilege, match="append-only: TRUNCATE on spend_checks"
    ):
        admin_rows(location, "TRUNCATE privkit.spend_checks")
    rewrite = (
        "UPDATE privkit.spends SET noise_multiplier = %s, epsilon = %s WHERE run_id = 'alice-1'"
    )
    admin_rows(location, "ALTER TABLE privkit.spends DISABLE TRIGGER spends_append_only")
    admin_rows(location, rewrite, (20.0, 0.01))
    with pytest.raises(
        LedgerTamperedError, match=r"spends row 1 \(event 3, run 'alice-1'\): its content"
    ):
        steward.verify()
    with pytest.raises(
        LedgerTamperedError, match=r"spends row 1 \(event 3\): its content does not match"
    ):
        charge(Ledger(pg_url("alice")), H1)  # the database checks the chain before every write
    with pytest.raises(LedgerTamperedError, match=r"spends row 1 \(event 3\)"):
        Ledger(pg_url("bob")).verify()  # bob cannot see alice's spend; the database tells him
    admin_rows(
        location, rewrite, (original.noise_multiplier, original.epsilon)
    )  # as it was, trigger off
    with pytest.raises(
        LedgerTamperedError, match=r"triggers \['spends_append_only'\] were disabled"
    ):
        steward.verify()
    admin_rows(location, "ALTER TABLE privkit.spends ENABLE TRIGGER spends_append_only")
    assert steward.verify().events == 4


def test_a_superuser_who_deletes_the_last_spend_is_caught_by_the_head_and_by_an_anchor(
    pg_url: URL,
) -> None:
    steward = _hospital(pg_url)
    anchor = steward.history()[-1].hash  # bob's spend, event 4: the head recorded with his run
    location, tables = steward.location, ("spends", "spend_scopes", "spend_checks")
    triggers = "; ".join(f"ALTER TABLE privkit.{t} {{0}} TRIGGER {t}_append_only" for t in tables)
    admin_rows(location, triggers.format("DISABLE"))
    for table, key in (
        ("spend_checks", "spend_id"),
        ("spend_scopes", "spend_id"),
        ("spends", "id"),
    ):
        admin_rows(location, f"DELETE FROM privkit.{table} WHERE {key} = 2")
    with pytest.raises(
        LedgerTamperedError, match="its head is event 4, its last event 3: events after it"
    ):
        steward.verify()
    admin_rows(location, "ALTER TABLE privkit.head DISABLE TRIGGER head_moves_on")
    admin_rows(location, "UPDATE privkit.head SET seq = 3, hash = %s", (steward.history()[0].hash,))
    admin_rows(location, "ALTER TABLE privkit.head ENABLE TRIGGER head_moves_on")
    admin_rows(location, triggers.format("ENABLE"))
    assert steward.verify().events == 3  # a valid, shorter chain...
    with pytest.raises(
        LedgerTamperedError, match=f"the head {anchor} recorded earlier is not on its chain"
    ):
        steward.verify(head=anchor)  # ...that the anchor gives away


# -- the charge: what the database checks, and what it takes on trust ---------------------------------------

CHARGE = (
    "SELECT run_id FROM privkit.charge(%s::text[], %s, 0.05, 50, 1e-5, 'prv', 2.7, %s, 'secure', "
    "%s::jsonb)"
)


def _claims(*claims: tuple[int, str, str, list[int], float]) -> str:
    return json.dumps(
        [dict(zip(("budget", "institution", "group", "spends", "epsilon"), c)) for c in claims]
    )


def _sqlstate(url: str, *args, serializable: bool = True) -> str:
    with pytest.raises(psycopg.Error) as refused:
        sql(url, CHARGE, args, serializable=serializable)
    return refused.value.sqlstate


def test_a_charge_must_compose_the_spends_the_database_finds_and_stay_within_budget(
    pg_url: URL,
) -> None:
    budget = Ledger(pg_url("steward")).set_budget(
        D, epsilon=(eps_of(1) + eps_of(2)) / 2, delta=1e-5
    )
    first = charge(
        Ledger(pg_url("alice")), H1, run_id="first"
    )  # spend 1: h1's patients have one run
    alice, b = pg_url("alice"), budget.id
    retry, refused = "40001", "PK001"  # retry: read the ledger again
    assert _sqlstate(alice, [H1], 1.0, "r", "[]") == retry  # no claim for D's budget
    assert (
        _sqlstate(alice, [H1], 1.0, "r", _claims((b, "h1", "", [], 2.7))) == retry
    )  # without spend 1
    assert (
        _sqlstate(alice, [D], 1.0, "r", _claims((b, "h1", "", [1], eps_of(2)))) == retry
    )  # other patients?
    assert (
        _sqlstate(alice, [H1], 1.0, "r", _claims((b, "h1", "", [1], eps_of(2)))) == refused
    )  # over budget
    assert _sqlstate(alice, [H2], 0.0, "r", _claims((b, "h2", "", [], 0.0))) == refused  # no noise
    honest = _claims((b, "h2", "", [], eps_of(1)))
    assert _sqlstate(alice, [H2], 1.0, "r", honest, serializable=False) == "PK000"  # READ COMMITTED
    assert sql(alice, CHARGE, ([H2], 1.0, "second", honest)) == [("second",)]
    assert [s.run_id for s in Ledger(alice).history()] == ["first", "second"] and first.id == 1
    assert Ledger(pg_url("steward")).verify().events == 3


def test_a_client_that_under_reports_its_composition_is_found_by_verify(pg_url: URL) -> None:
    # The one thing the database takes on trust: the accountant's number. It keeps it, and verify checks it.
    steward = Ledger(pg_url("steward"))
    budget = steward.set_budget(D, epsilon=(eps_of(1) + eps_of(2)) / 2, delta=1e-5)
    charge(Ledger(pg_url("alice")), H1, run_id="first")
    lie = _claims((budget.id, "h1", "", [1], 0.5))  # the honest number is eps_of(2), over budget
    assert sql(pg_url("alice"), CHARGE, ([H1], 1.0, "second", lie)) == [("second",)]
    claims = admin_rows(
        steward.location, "SELECT spend_id, spends, epsilon FROM privkit.spend_checks ORDER BY 1"
    )
    assert claims == [(1, [], pytest.approx(eps_of(1))), (2, [1], 0.5)]
    message = (
        rf"spends row 2 \(event 3, run 'second'\): it claimed epsilon 0.5 composed against the budget "
        rf"of {D} \(epsilon={budget.epsilon:g}, budget row 1\), but privkit's accountant composes "
        rf"{eps_of(2):.4g}: alice charged it without privkit's accountant"
    )
    with pytest.raises(LedgerTamperedError, match=message):
        steward.verify()
    with pytest.raises(
        BudgetExceededError
    ):  # privkit itself composes what was recorded: no third run
        charge(Ledger(pg_url("alice")), H1, run_id="third")


# -- concurrency and faults: real processes ---------------------------------------------------------------

needs_fork = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs fork"
)


def _race(shipped: bytes, barrier, i: int) -> None:
    ledger = pickle.loads(shipped)  # as a Ray worker gets it: the URL, no connection
    barrier.wait()
    try:
        ledger.charge([D if i % 2 else H1], run(), run_id=f"p{i}", actor=f"process {os.getpid()}")
    except BudgetExceededError:
        sys.exit(3)
    sys.exit(0)


@needs_fork
def test_16_processes_racing_for_a_budget_for_3_runs_charge_exactly_3(pg_url: URL) -> None:
    # fork: separate processes, each with its own connections (and no torch import to wait for); the barrier
    # makes them charge at once. Each charge is one SERIALIZABLE transaction on the head's row lock; a
    # process that read the ledger before another's spend is told to retry by the database, and does.
    steward = Ledger(pg_url("steward"))
    budget = steward.set_budget(
        D, epsilon=(eps_of(3) + eps_of(4)) / 2, delta=1e-5
    )  # room for exactly 3 runs
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(16)
    shipped = pickle.dumps(Ledger(pg_url("alice")))
    processes = [context.Process(target=_race, args=(shipped, barrier, i)) for i in range(16)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=120)
    assert sorted(p.exitcode for p in processes) == [0] * 3 + [3] * 13
    assert count(steward, "spends") == 3 and count(steward, "spend_checks") >= 3
    spent = steward.spent(D)
    assert spent.n_spends == 3 and spent.epsilon == pytest.approx(eps_of(3))
    assert spent.epsilon <= budget.epsilon
    assert steward.verify().events == 4  # the chain, and every claim composed again


def _stall(url: str, conn, committed: bool) -> None:
    """Charge, and stall (to be killed) with the spend written but not committed, or committed."""
    import time

    if committed:
        write = _ledger_postgres.LedgerDatabase.write

        def stalled(self, decide):
            conn.send(write(self, decide).seq)
            time.sleep(120)
    else:
        append = _ledger_postgres.LedgerDatabase._append

        def stalled(self, db, event, checks):
            conn.send(append(self, db, event, checks).seq)
            time.sleep(120)

    setattr(_ledger_postgres.LedgerDatabase, "write" if committed else "_append", stalled)
    charge(Ledger(url), H1, run_id="killed")


@needs_fork
@pytest.mark.parametrize("committed", [False, True])
def test_a_client_killed_mid_charge_leaves_all_of_its_spend_or_none(
    pg_url: URL, committed: bool
) -> None:
    steward = Ledger(pg_url("steward"))
    steward.set_budget(D, epsilon=50.0, delta=1e-5)
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe()
    process = context.Process(target=_stall, args=(pg_url("alice"), child, committed))
    process.start()
    assert parent.poll(60), f"the charge did not reach the database (exit code {process.exitcode})"
    assert parent.recv() == 2  # the spend is event 2, written (and, or not, committed)
    os.kill(process.pid, signal.SIGKILL)
    process.join(timeout=60)
    n = int(committed)
    assert [count(steward, t) for t in ("spends", "spend_scopes", "spend_checks")] == [n, n, n]
    after = charge(Ledger(pg_url("alice")), H1, run_id="after")  # the killed client's lock is gone
    assert after.seq == 2 + n and steward.verify().events == 2 + n
    assert [s.run_id for s in steward.history()] == ["killed"] * n + ["after"]


def test_a_lost_connection_is_a_clear_error_and_no_training_starts(
    pg_url: URL, monkeypatch: pytest.MonkeyPatch, synthetic_root: Path
) -> None:
    from privkit import data
    from privkit.train import TrainConfig, train

    ledger = Ledger(pg_url("alice"))
    append = _ledger_postgres.LedgerDatabase._append

    def cut(self, db, event, checks):  # the spend written; the server then drops the connection
        stored = append(self, db, event, checks)
        admin_rows(ledger.location, "SELECT pg_terminate_backend(%s)", (db.info.backend_pid,))
        return stored

    monkeypatch.setattr(_ledger_postgres.LedgerDatabase, "_append", cut)
    read = []
    monkeypatch.setattr(data, "load", lambda *args, **kwargs: read.append(args))
    config = TrainConfig(
        dataset="pneumoniamnist",
        epsilon=None,
        noise_multiplier=1.0,
        epochs=1,
        data_root=str(synthetic_root),
        device="cpu",
    )
    lost = (
        r"Lost the connection to the ledger postgresql://alice:\*\*\*@127\.0\.0\.1.*may or may not have "
        r"been recorded \(a charge counts if it was: no refunds\)"
    )
    with pytest.raises(LedgerError, match=lost):
        train(config, ledger=ledger, progress=False)
    assert (
        read == [] and count(ledger, "spends") == 0
    )  # no data read; here, the spend was not committed
    unreachable = r"Cannot connect to the ledger postgresql://alice:\*\*\*@127\.0\.0\.1:1/x: "
    with pytest.raises(LedgerError, match=unreachable):
        Ledger(
            "postgresql://alice:secret@127.0.0.1:1/x"
        )  # no server there; the password never printed


# -- moving a ledger; creating one ------------------------------------------------------------------------


def _sqlite_history(path: Path) -> list:
    """An SQLite ledger with every kind of event and value: a registration, budgets (a raise with a reason),
    spends on several scopes, seeded, without noise (epsilon inf), with text that is not ASCII."""
    ledger = Ledger(path)
    ledger.register_dataset(
        "mimic-cxr", size=377_110, actor="steward@h", description="PhysioNet «v2»\n"
    )
    ledger.set_budget(D, epsilon=4.0, delta=1e-5, actor="dpo")
    ledger.set_budget(
        D, epsilon=8.0, delta=1e-5, actor="dpo", raise_budget=True, reason="ticket 42 ✓"
    )
    mimic = "dataset:mimic-cxr"
    charge(ledger, H1, f"{D}/group:kids", run_id="r1", sample_rate=256 / 4708)
    charge(
        ledger,
        f"{mimic}/institution:bidmc",
        run_id="r2",
        randomness="seeded:ab12",
        allow_seeded=True,
    )
    charge(ledger, mimic, run_id="open", noise_multiplier=0.0)
    return ledger.events()


def test_an_sqlite_ledger_moves_to_postgresql_and_back_with_its_chain(
    pg_url: URL, tmp_path: Path
) -> None:
    events = _sqlite_history(tmp_path / "ledger.sqlite")
    head = events[-1].hash
    verified = migrate(tmp_path / "ledger.sqlite", pg_url("steward"))
    assert (verified.head, verified.events, verified.anchor) == (head, 6, 6)
    moved = Ledger(pg_url("steward"))
    assert moved.events() == events  # every field as it was: times, actors, floats, scopes in order
    assert moved.spent(D) == Ledger(tmp_path / "ledger.sqlite").spent(D)
    spend = charge(Ledger(pg_url("tester")), H2, run_id="in postgres")
    assert (spend.seq, spend.prev, moved.verify(head=head).anchor) == (
        7,
        head,
        6,
    )  # the chain goes on
    assert migrate(pg_url("steward"), tmp_path / "back.sqlite").head == spend.hash
    assert Ledger(tmp_path / "back.sqlite").events() == [*events, spend]
    with pytest.raises(
        LedgerError, match="imported into a new ledger only; this one has 7 events of its"
    ):
        migrate(tmp_path / "ledger.sqlite", pg_url("steward"))
    with pytest.raises(LedgerError, match="imported into a new ledger only; .*back.sqlite has 7"):
        migrate(tmp_path / "ledger.sqlite", tmp_path / "back.sqlite")
    assert count(moved, "spends") == 4


def test_a_tampered_or_forged_history_is_not_imported(pg_url: URL, tmp_path: Path) -> None:
    events = _sqlite_history(tmp_path / "ledger.sqlite")
    target = Ledger(pg_url("steward"))
    forged = [*events[:3], dataclasses.replace(events[3], epsilon=0.01), *events[4:]]
    with pytest.raises(
        LedgerTamperedError, match="imported event 4 does not hash to its recorded hash"
    ):
        target._store.import_events(forged)
    skipped = [*events[:3], *events[4:]]
    with pytest.raises(LedgerError, match="an imported event must extend the chain: event 4 after"):
        target._store.import_events(skipped)
    assert target.events() == []
    with pytest.raises(LedgerError, match="permission denied for function import_dataset"):
        migrate(tmp_path / "ledger.sqlite", pg_url("alice"))  # a steward's, not a researcher's


def test_init_needs_a_superuser_is_repeatable_and_a_database_without_it_is_no_ledger(
    postgres_cluster,
) -> None:
    server = postgres_cluster.server
    psycopg.connect(server.url(), autocommit=True).execute("CREATE DATABASE bare")
    bare = postgres_cluster.url("steward", "bare")
    with pytest.raises(
        LedgerError,
        match=r"No privkit ledger at postgresql://steward:\*\*\*@.*/bare .*"
        "privkit budget init URL",
    ):
        Ledger(bare)
    with pytest.raises(
        LedgerError, match="privkit budget init needs a superuser .* gives no superuser"
    ):
        init(bare)
    assert "Created the privkit ledger (schema version 2)" in init(server.url(database="bare"))
    charge(Ledger(postgres_cluster.url("tester", "bare")), H1)
    assert "Brought up to date" in init(
        server.url(database="bare")
    )  # again: data kept, functions renewed
    assert Ledger(postgres_cluster.url("tester", "bare")).verify().events == 1


def test_the_budget_commands_on_a_postgresql_ledger(
    pg_url: URL, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    steward, alice = ["--ledger", pg_url("steward")], ["--ledger", pg_url("alice")]
    run = ["--noise-multiplier", "1", "--sample-rate", "0.05", "--steps", "50", "--delta", "1e-5"]
    assert main(["budget", "register", "--dataset", "mimic-cxr", "--size", "1000", *steward]) == 0
    assert main(["budget", "grant", "--dataset", "mimic-cxr", "--role", "alice", *steward]) == 0
    assert (
        "dataset:mimic-cxr granted to the role alice (postgresql://steward:***@"
        in capsys.readouterr().out
    )
    budget = ["--epsilon", f"{(eps_of(1) + eps_of(2)) / 2}", "--delta", "1e-5"]
    assert main(["budget", "set", "--scope", D, *budget, *steward]) == 0
    raise_ = ["--epsilon", "9", "--delta", "1e-5", "--raise", "--reason", "more"]
    assert main(["budget", "set", "--scope", D, *raise_, *alice]) == 2
    assert "permission denied for function set_budget" in capsys.readouterr().err
    assert main(["budget", "charge", "--scope", H1, *run, "--run-id", "r1", *alice]) == 0
    assert main(["budget", "charge", "--scope", D, *run, "--run-id", "r2", *alice]) == 2
    assert f"Privacy budget of {D} exceeded" in capsys.readouterr().err
    monkeypatch.setenv("PRIVKIT_LEDGER", pg_url("alice"))  # the researcher's connection string
    assert main(["budget", "charge", "--scope", "dataset:mimic-cxr", *run, "--run-id", "r3"]) == 0
    assert main(["budget", "history"]) == 0
    out = capsys.readouterr().out
    assert "r1" in out and "r3" in out and "alice" in out and "r2" not in out
    assert main(["budget", "show", "--scope", C]) == 2
    assert "not granted to alice" in capsys.readouterr().err
    assert main(["budget", "verify", *steward]) == 0
    assert "hash chain intact, 4 events" in capsys.readouterr().out
    assert (
        main(["budget", "grant", "--dataset", "mimic-cxr", "--role", "alice", "--revoke", *steward])
        == 0
    )
    assert main(["budget", "charge", "--scope", "dataset:mimic-cxr", *run, "--run-id", "r4"]) == 2
    sqlite = str(tmp_path / "copy.sqlite")
    assert main(["budget", "migrate", pg_url("steward"), sqlite]) == 0
    assert "Copied 4 events: hash chain intact" in capsys.readouterr().out
    assert (
        main(["budget", "init", sqlite]) == 0
        and main(["budget", "verify", "--ledger", sqlite]) == 0
    )
