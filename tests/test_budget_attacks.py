"""The ledger against someone who wants to spend more than a budget allows and knows our code: misspelled and
foreign scopes, rows rewritten, inserted, deleted or reordered in the file, the whole chain recomputed, silent
raises, seeded and shared noise; and a version-1 ledger migrated. What does not depend on the file runs on
PostgreSQL too (tests/postgres.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sqlite3
from pathlib import Path

import pytest
from ledger_runs import RUN, charge
from postgres import admin_rows

from privkit import _hashchain, _ledger_sqlite
from privkit.accounting import epsilon
from privkit.budget import (
    SCHEMA_VERSION,
    BudgetExceededError,
    Ledger,
    LedgerError,
    LedgerTamperedError,
    Scope,
    SeededRunError,
    parse_scope,
)

D = "dataset:pneumoniamnist"
H1, H2 = f"{D}/institution:h1", f"{D}/institution:h2"
EPS = epsilon(**RUN)
ZEROS = "0" * 64


def rows(path: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def counts(ledger: Ledger) -> tuple[int, ...]:
    """The rows of the budgets, datasets, spends and spend_scopes tables, as stored."""
    tables = ("budgets", "datasets", "spends", "spend_scopes")
    if ledger.path is None:  # PostgreSQL: every row, as the superuser
        return tuple(
            admin_rows(ledger.location, f"SELECT count(*) FROM privkit.{t}")[0][0] for t in tables
        )
    return tuple(rows(ledger.path, f"SELECT count(*) FROM {t}")[0][0] for t in tables)


def tamper(path: Path, *statements: str) -> None:
    """A careful attacker with write access: drops the guards, edits, puts the guards back."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        triggers = db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
        ).fetchall()
        db.execute("BEGIN")
        for name, _ in triggers:
            db.execute(f"DROP TRIGGER {name}")
        for statement in statements:
            db.execute(statement)
        for _, sql in triggers:
            db.execute(sql)
        db.execute("COMMIT")
    finally:
        db.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Ledger:
    """Both backends; on PostgreSQL as "tester", a steward who may charge too."""
    if request.param == "sqlite":
        return Ledger(tmp_path / "ledger.sqlite")
    return Ledger(request.getfixturevalue("pg_url")("tester"))


sqlite_only = pytest.mark.parametrize("ledger", ["sqlite"], indirect=True)  # the file itself


# -- scopes: canonical, validated --------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "canonical"),
    [
        ("dataset:PneumoniaMNIST", D),
        ("dataset:pneumonia", D),
        ("dataset:PNEUMONIAMNIST/institution:h1", H1),
        ("dataset:pneumoniamnst/group:kids", f"{D}/group:kids"),
        ("dataset:ChestMNIST", "dataset:chestmnist"),
    ],
)
def test_variants_of_a_known_dataset_are_refused_with_the_canonical_scope(
    ledger: Ledger, scope: str, canonical: str
) -> None:
    ledger.set_budget(D, epsilon=EPS * 1.5, delta=1e-5)
    charge(ledger, D)  # the budget has room for no second run...
    message = re.escape(
        f"Unknown dataset {parse_scope(scope).dataset!r} in scope {scope!r}; did you mean "
        f"'{canonical}'?"
    )
    with pytest.raises(ValueError, match=message):
        charge(ledger, scope)  # ...and a variant is no way around it
    with pytest.raises(ValueError, match=message):
        ledger.set_budget(scope, epsilon=100.0, delta=1e-5)
    for read in (ledger.spent, ledger.show, ledger.history, ledger.events):
        with pytest.raises(ValueError, match=message):
            read(scope)  # no reassuring "nothing spent" for a variant either
    assert counts(ledger) == (1, 0, 1, 1)


def test_a_foreign_dataset_is_refused_until_registered_with_its_size(ledger: Ledger) -> None:
    with pytest.raises(
        ValueError,
        match=r"Unknown dataset 'mimic-cxr' in scope 'dataset:mimic-cxr'\. .*"
        r"\(pneumoniamnist, chestmnist\); register another .*--size N",
    ):
        charge(ledger, "dataset:mimic-cxr")
    with pytest.raises(ValueError, match="Unknown dataset 'mimic-cxr'"):
        ledger.set_budget("dataset:mimic-cxr", epsilon=1.0, delta=1e-6)
    registered = ledger.register_dataset(
        "mimic-cxr", size=377_110, actor="steward", description="PhysioNet"
    )
    assert (registered.name, registered.size, registered.seq) == ("mimic-cxr", 377_110, 1)
    ledger.set_budget("dataset:mimic-cxr", epsilon=EPS * 1.5, delta=1e-6)
    charge(ledger, "dataset:mimic-cxr/institution:bidmc", delta=1e-6)
    with pytest.raises(BudgetExceededError, match="budget of dataset:mimic-cxr exceeded"):
        charge(
            ledger, "dataset:mimic-cxr", delta=1e-6
        )  # a registered dataset's budget binds like any other
    with pytest.raises(ValueError, match="did you mean 'dataset:mimic-cxr'"):
        charge(ledger, "dataset:MIMIC-CXR", delta=1e-6)
    assert [d.name for d in ledger.datasets()] == ["mimic-cxr"]
    events = ledger.events("dataset:mimic-cxr")
    assert [type(e).__name__ for e in events] == ["Registration", "Budget", "Spend"]


@pytest.mark.parametrize(
    ("name", "size", "message"),
    [
        ("MIMIC-CXR", 10, "Expected name='MIMIC-CXR' in lower case.* (canonical: 'mimic-cxr')"),
        ("a b", 10, "Expected name='a b' in lower case"),
        ("x", 0, "Expected size=0 to be an integer >= 1"),
        ("x", 2.5, "size=2.5"),
        ("pneumoniamnist", 10, "'pneumoniamnist' is known to privkit"),
        ("mimic-cxr", 5, "'mimic-cxr' was registered with size 377110 .*never changed"),
    ],
)
def test_bad_registrations_are_named_and_record_nothing(
    ledger: Ledger, name: str, size: object, message: str
) -> None:
    ledger.register_dataset("mimic-cxr", size=377_110)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ledger.register_dataset(name, size=size)
    assert counts(ledger) == (0, 1, 0, 0)


def test_an_id_that_differs_only_in_case_from_one_in_the_ledger_is_refused(ledger: Ledger) -> None:
    ledger.set_budget(H1, epsilon=50.0, delta=1e-5)
    charge(ledger, H1)
    message = f"Unknown institution 'H1' in scope '{D}/institution:H1'; did you mean '{H1}'?"
    with pytest.raises(ValueError, match=re.escape(message)):
        charge(ledger, f"{D}/institution:H1")
    charge(ledger, f"{D}/group:kids")
    with pytest.raises(ValueError, match=f"did you mean '{H1}/group:kids'"):
        ledger.set_budget(f"{H1}/group:Kids", epsilon=1.0, delta=1e-5)
    charge(ledger, H2)  # a new id, unlike any known one: a new institution
    assert counts(ledger) == (1, 0, 3, 3)


def test_scope_builds_only_scopes_that_parse_back_to_themselves() -> None:
    built = Scope("pneumoniamnist", institution="h-1", group="kids_0.5")
    assert parse_scope(str(built)) == built
    for bad in (dict(institution="h1/group:kids"), dict(institution="h 1"), dict(group=3)):
        with pytest.raises(ValueError, match="to be a name of letters, digits"):
            Scope("pneumoniamnist", **bad)  # would smuggle in another scope, or none
    with pytest.raises(ValueError, match="Expected dataset='pneumoniamnist/institution:h1'"):
        Scope("pneumoniamnist/institution:h1")


# -- the file: hash chain, guards, anchors -----------------------------------------------------


@sqlite_only
def test_each_row_hashes_its_typed_canonical_content_and_the_hash_before_it(ledger: Ledger) -> None:
    # The serialisation spelled out here, independently of the code: SHA-256 of sorted-key JSON of
    # [kind, {field: [type, value]}], floats as float.hex, every field but the hash.
    budget = ledger.set_budget(D, epsilon=4.0, delta=1e-5, actor="dpo")
    spend = charge(ledger, H1, run_id="r1", sample_rate=256 / 4708)
    (b,) = rows(ledger.path, "SELECT id, time, epsilon, prev, hash FROM budgets")
    body = {
        "id": ["int", "1"],
        "time": ["str", b[1]],
        "scope": ["str", D],
        "epsilon": ["float", "0x1.0000000000000p+2"],
        "delta": ["float", (1e-5).hex()],
        "actor": ["str", "dpo"],
        "reason": None,
        "seq": ["int", "1"],
        "prev": ["str", ZEROS],
    }
    text = json.dumps(["budget", body], sort_keys=True, separators=(",", ":"))
    assert (
        b[2] == 4.0
        and b[3] == ZEROS
        and b[4] == hashlib.sha256(text.encode()).hexdigest() == budget.hash
    )
    (s,) = rows(
        ledger.path, "SELECT time, sample_rate, epsilon, randomness, prev, hash FROM spends"
    )
    assert (
        s[1] == 256 / 4708 and s[3] == "secure" and s[4] == budget.hash
    )  # floats come back exactly
    body = {
        "id": ["int", "1"],
        "time": ["str", s[0]],
        "scopes": ["list", [["str", H1]]],
        "noise_multiplier": ["float", "0x1.0000000000000p+0"],
        "sample_rate": ["float", (256 / 4708).hex()],
        "steps": ["int", "50"],
        "delta": ["float", (1e-5).hex()],
        "accountant": ["str", "prv"],
        "epsilon": ["float", s[2].hex()],
        "run_id": ["str", "r1"],
        "actor": ["str", "tester"],
        "randomness": ["str", "secure"],
        "seq": ["int", "2"],
        "prev": ["str", budget.hash],
    }
    text = json.dumps(["spend", body], sort_keys=True, separators=(",", ":"))
    assert s[5] == hashlib.sha256(text.encode()).hexdigest() == spend.hash == ledger.verify().head
    assert ledger.verify().events == 2


@sqlite_only
@pytest.mark.parametrize(
    "statement",
    [
        "INSERT OR REPLACE INTO spends (id, time, noise_multiplier, sample_rate, steps, delta, accountant, "
        "epsilon, run_id, actor) VALUES (1, '2024-01-01', 20.0, 0.05, 50, 1e-5, 'prv', 0.21, 'r1', 'tester')",
        "REPLACE INTO spends SELECT * FROM spends",
        "INSERT OR REPLACE INTO spend_scopes VALUES (1, 'dataset:pneumoniamnist/institution:h1')",
        "INSERT OR REPLACE INTO budgets (id, time, scope, epsilon, delta, actor) "
        "VALUES (1, 't', 'x', 99, 0.1, 'a')",
        "INSERT OR REPLACE INTO datasets (id, time, name, size, actor) VALUES (1, 't', 'x', 1, 'a')",
        "INSERT INTO budgets (id, time, scope, epsilon, delta, actor) VALUES (1, 't', 'x', 99, 0.1, 'a') "
        "ON CONFLICT (id) DO UPDATE SET epsilon = 99",
    ],
)
def test_insert_or_replace_over_a_row_is_refused_by_the_file_itself(
    ledger: Ledger, statement: str
) -> None:
    ledger.register_dataset("mimic-cxr", size=10)
    ledger.set_budget(D, epsilon=8.0, delta=1e-5)
    charge(ledger, H1, run_id="r1")
    before = rows(ledger.path, "SELECT * FROM spends") + rows(ledger.path, "SELECT * FROM budgets")
    db = sqlite3.connect(ledger.path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute(statement)
    db.close()
    assert (
        rows(ledger.path, "SELECT * FROM spends") + rows(ledger.path, "SELECT * FROM budgets")
        == before
    )
    assert ledger.verify().events == 3


@sqlite_only
@pytest.mark.parametrize("careful", [False, True])
def test_the_rewrite_from_the_issue_is_detected_and_refuses_every_write(
    ledger: Ledger, careful: bool
) -> None:
    # Issue 12: a spend rewritten with plain SQL made the ledger report 0.21 spent instead of 2.91. The
    # attacker drops the triggers first; a careful one keeps the row's place, link and hash.
    ledger.set_budget(D, epsilon=3.0, delta=1e-5)
    spend = charge(ledger, H1, run_id="r1")
    assert spend.epsilon == pytest.approx(EPS)
    small = epsilon(noise_multiplier=20.0, sample_rate=0.05, steps=50, delta=1e-5)
    link = f"{spend.seq}, '{spend.prev}', '{spend.hash}'" if careful else "0, '', ''"
    tamper(
        ledger.path,
        "INSERT OR REPLACE INTO spends (id, time, noise_multiplier, sample_rate, steps, "
        "delta, accountant, epsilon, run_id, actor, randomness, seq, prev, hash) VALUES (1, "
        f"'{spend.time}', 20.0, 0.05, 50, 1e-5, 'prv', {small}, 'r1', 'tester', 'secure', {link})",
    )
    assert ledger.spent(D).epsilon < 0.5  # what the rewrite was for: reads are the file's
    why = (
        "content does not match its hash" if careful else r"place in the chain \(event 0\) is taken"
    )
    where = rf"spends row 1 \(event {spend.seq if careful else 0}, run 'r1'\): "
    with pytest.raises(LedgerTamperedError, match=f"{where}its {why}") as found:
        ledger.verify()
    assert (found.value.table, found.value.row_id) == ("spends", 1) and isinstance(
        found.value, LedgerError
    )
    before = rows(ledger.path, "SELECT count(*) FROM spends")
    with pytest.raises(
        LedgerTamperedError, match="privkit writes nothing to a ledger that does not verify"
    ):
        charge(ledger, H1, run_id="r2")  # would fit the rewritten ledger's budget
    with pytest.raises(LedgerTamperedError):
        ledger.set_budget(H2, epsilon=1.0, delta=1e-5)
    with pytest.raises(LedgerTamperedError):
        ledger.register_dataset("mimic-cxr", size=10)
    assert rows(ledger.path, "SELECT count(*) FROM spends") == before and counts(ledger)[:2] == (
        1,
        0,
    )


def _three_spends(ledger: Ledger) -> list:
    ledger.set_budget(D, epsilon=50.0, delta=1e-5)
    return [charge(ledger, H1, run_id=f"r{i}") for i in (1, 2, 3)]


@sqlite_only
def test_a_deleted_middle_row_is_detected(ledger: Ledger) -> None:
    spends = _three_spends(ledger)
    tamper(
        ledger.path,
        "DELETE FROM spend_scopes WHERE spend_id = 2",
        "DELETE FROM spends WHERE id = 2",
    )
    message = r"spends row 3 \(event 4, run 'r3'\): event 3 before it is missing"
    with pytest.raises(LedgerTamperedError, match=message):
        ledger.verify()
    assert spends[1].seq == 3


@sqlite_only
def test_a_deleted_scope_of_a_spend_is_detected(ledger: Ledger) -> None:
    ledger.set_budget(D, epsilon=50.0, delta=1e-5)
    charge(ledger, H1, D, run_id="r1")  # counted against D through both of its scopes
    tamper(ledger.path, f"DELETE FROM spend_scopes WHERE scope = '{D}'")
    message = r"spends row 1 \(event 2, run 'r1'\): its content does not match"
    with pytest.raises(LedgerTamperedError, match=message):
        ledger.verify()


@sqlite_only
@pytest.mark.parametrize("where", ["middle", "end"])
def test_an_inserted_row_is_detected(ledger: Ledger, where: str) -> None:
    spends = _three_spends(ledger)
    seq, prev = (2, spends[0].prev) if where == "middle" else (5, spends[2].hash)
    fake = dataclasses.replace(spends[0], id=9, seq=seq, prev=prev, hash="")
    fake = dataclasses.replace(
        fake, hash=_hashchain.event_hash(fake) if where == "middle" else "f" * 64
    )
    tamper(
        ledger.path,
        "INSERT INTO spends (id, time, noise_multiplier, sample_rate, steps, delta, "
        "accountant, epsilon, run_id, actor, randomness, seq, prev, hash) VALUES (9, "
        f"'{fake.time}', 1.0, 0.05, 50, 1e-5, 'prv', {fake.epsilon}, 'run', 'tester', 'secure', {seq}, "
        f"'{prev}', '{fake.hash}')",
        f"INSERT INTO spend_scopes VALUES (9, '{H1}')",
    )
    message = (
        "is taken: a row was inserted"
        if where == "middle"
        else "its content does not match its hash"
    )
    with pytest.raises(LedgerTamperedError, match=message):
        ledger.verify()


@sqlite_only
def test_a_rewritten_budget_or_reason_is_detected(ledger: Ledger) -> None:
    ledger.set_budget(D, epsilon=4.0, delta=1e-5)
    ledger.set_budget(D, epsilon=8.0, delta=1e-5, raise_budget=True, reason="DPO ticket 42")
    tamper(ledger.path, "UPDATE budgets SET reason = 'board approval' WHERE id = 2")
    with pytest.raises(
        LedgerTamperedError, match=r"budgets row 2 \(event 2\): its content does not match"
    ):
        ledger.verify()
    tamper(ledger.path, "UPDATE budgets SET reason = 'DPO ticket 42' WHERE id = 2")  # as it was
    assert ledger.verify().events == 2
    tamper(ledger.path, "UPDATE budgets SET epsilon = 100 WHERE id = 1")
    with pytest.raises(
        LedgerTamperedError, match=r"budgets row 1 \(event 1\): its content does not match"
    ):
        charge(ledger, D)


@sqlite_only
def test_reordered_rows_are_detected(ledger: Ledger) -> None:
    _three_spends(ledger)
    tamper(ledger.path, "UPDATE spends SET seq = 7 - seq WHERE id IN (2, 3)")  # swap places 3 and 4
    with pytest.raises(
        LedgerTamperedError, match=r"spends row 3 \(event 3, run 'r3'\): it does not follow"
    ):
        ledger.verify()


@sqlite_only
def test_dropped_triggers_are_detected(ledger: Ledger) -> None:
    charge(ledger, D)
    db = sqlite3.connect(ledger.path)
    db.execute("DROP TRIGGER spends_no_REPLACE")
    db.commit()
    db.close()
    with pytest.raises(LedgerTamperedError, match=r"triggers \['spends_no_REPLACE'\] were dropped"):
        charge(ledger, D)


@sqlite_only
def test_deleting_the_last_spend_is_caught_by_its_counter_and_by_an_anchor(ledger: Ledger) -> None:
    spends = _three_spends(ledger)
    anchor = spends[-1].hash  # the head recorded in run r3's provenance
    tamper(
        ledger.path,
        "DELETE FROM spend_scopes WHERE spend_id = 3",
        "DELETE FROM spends WHERE id = 3",
    )
    counter = (
        "spends ends at row 2, but its AUTOINCREMENT counter is at 3: its last rows were deleted"
    )
    with pytest.raises(LedgerTamperedError, match=counter):
        ledger.verify()
    tamper(ledger.path, "UPDATE sqlite_sequence SET seq = 2 WHERE name = 'spends'")
    assert ledger.verify().head == spends[1].hash  # a valid, shorter chain...
    with pytest.raises(
        LedgerTamperedError, match=f"the head {anchor} recorded earlier is not on its chain"
    ):
        ledger.verify(head=anchor)  # ...that the anchor gives away


@sqlite_only
def test_a_whole_rewrite_with_every_hash_recomputed_passes_verify_but_not_an_anchor(
    ledger: Ledger,
) -> None:
    budget = ledger.set_budget(D, epsilon=3.0, delta=1e-5)
    spend = charge(ledger, H1, run_id="r1")
    anchor = ledger.verify().head  # recorded outside the file
    rewritten = dataclasses.replace(spend, noise_multiplier=20.0, epsilon=0.2)
    forged = _hashchain.link(rewritten, seq=2, prev=budget.hash)
    tamper(
        ledger.path,
        f"UPDATE spends SET noise_multiplier = 20.0, epsilon = 0.2, hash = '{forged.hash}'",
    )
    assert (
        ledger.verify().head == forged.hash
    )  # an unkeyed chain is recomputed by whoever knows the code
    assert ledger.verify(head=budget.hash).anchor == 1  # nothing before the rewritten event changed
    with pytest.raises(LedgerTamperedError, match="recorded earlier is not on its chain"):
        ledger.verify(head=anchor)


def test_verify_names_bad_anchors_and_an_empty_ledger(ledger: Ledger) -> None:
    empty = ledger.verify(head=ZEROS)
    assert (empty.head, empty.events, empty.anchor) == (ZEROS, 0, 0)
    for head in ("abc", "g" * 64, 42):
        with pytest.raises(ValueError, match="to be a SHA-256 hex digest"):
            ledger.verify(head=head)
    spend = charge(ledger, D)
    assert ledger.verify(head=spend.hash.upper()).anchor == 1
    with pytest.raises(LedgerTamperedError, match="not on its chain"):
        ledger.verify(head="a" * 64)


# -- raising a budget ------------------------------------------------------------------------


def test_a_silent_raise_is_refused_and_records_nothing(ledger: Ledger) -> None:
    ledger.set_budget(D, epsilon=4.0, delta=1e-5)
    refused = re.escape(
        f"Refused to raise the budget of {D} from epsilon=4, delta=1e-05 to epsilon=6, "
        "delta=1e-05 without raise_budget=True and a reason"
    )
    with pytest.raises(ValueError, match=refused):
        ledger.set_budget(D, epsilon=6.0, delta=1e-5)
    with pytest.raises(ValueError, match=refused):
        ledger.set_budget(D, epsilon=6.0, delta=1e-5, raise_budget=True)  # no reason
    with pytest.raises(ValueError, match=refused):
        ledger.set_budget(D, epsilon=6.0, delta=1e-5, reason="because")  # no flag
    with pytest.raises(ValueError, match="Refused to raise .* to epsilon=3, delta=0.0001"):
        ledger.set_budget(D, epsilon=3.0, delta=1e-4)  # a larger delta is a raise too
    with pytest.raises(ValueError, match="Expected reason='  ' to be a non-empty string"):
        ledger.set_budget(D, epsilon=6.0, delta=1e-5, raise_budget=True, reason="  ")
    assert [b.epsilon for b in ledger.budgets()] == [4.0]
    ledger.set_budget(D, epsilon=3.0, delta=1e-6)  # lowering needs neither
    ledger.set_budget(
        H1, epsilon=10.0, delta=1e-5
    )  # nor a first budget (the dataset's still binds)
    assert [(b.epsilon, b.reason) for b in ledger.budgets()] == [
        (4.0, None),
        (3.0, None),
        (10.0, None),
    ]


def test_a_raise_with_a_reason_is_recorded_on_the_chain(ledger: Ledger) -> None:
    ledger.set_budget(D, epsilon=4.0, delta=1e-5, actor="dpo")
    raised = ledger.set_budget(
        D, epsilon=6.0, delta=1e-5, actor="dpo", raise_budget=True, reason="DPO ticket 42"
    )
    actor = "dpo" if ledger.path else "tester"  # PostgreSQL records the database user
    assert (raised.epsilon, raised.reason, raised.actor, raised.seq) == (
        6.0,
        "DPO ticket 42",
        actor,
        2,
    )
    assert ledger.spent(D).budget == raised and ledger.verify().head == raised.hash
    assert [e.reason for e in ledger.events(H1)] == [
        None,
        "DPO ticket 42",
    ]  # the dataset's budgets bind h1


# -- seeded runs ------------------------------------------------------------------------------


@sqlite_only
def test_a_seeded_run_is_refused_unless_allowed_and_then_recorded(ledger: Ledger) -> None:
    refused = (
        r"Run 'r1' is seeded \(randomness='seeded:ab12'\).*whoever knows the seed can replay it.*"
        r"allow_seeded=True.*only for public benchmark data; nothing was charged"
    )
    with pytest.raises(SeededRunError, match=refused):
        charge(ledger, D, run_id="r1", randomness="seeded:ab12")
    assert counts(ledger) == (0, 0, 0, 0) and issubclass(SeededRunError, LedgerError)
    spend = charge(ledger, D, run_id="r1", randomness="seeded:ab12", allow_seeded=True)
    assert spend.randomness == "seeded:ab12" and ledger.history()[0].randomness == "seeded:ab12"
    assert charge(ledger, D, run_id="r2").randomness == "secure"
    tamper(
        ledger.path, "UPDATE spends SET randomness = 'secure' WHERE id = 1"
    )  # hiding that it was seeded
    with pytest.raises(LedgerTamperedError, match=r"spends row 1 \(event 1, run 'r1'\)"):
        ledger.verify()


def test_a_noise_stream_spent_on_an_overlapping_scope_is_refused(ledger: Ledger) -> None:
    seeded = dict(randomness="seeded:0f0f", allow_seeded=True)
    charge(ledger, H1, run_id="r1", **seeded)
    for scope in (
        D,
        H1,
        f"{D}/group:kids",
        f"{H1}/group:kids",
    ):  # every one shares patients with h1
        with pytest.raises(
            SeededRunError,
            match=f"Run 'r2' reuses the noise stream 'seeded:0f0f' of spend 1 "
            f"\\(run 'r1'\\) on {H1}: .*not independent",
        ):
            charge(ledger, scope, run_id="r2", **seeded)
    charge(
        ledger, H2, run_id="r3", **seeded
    )  # other patients: no two releases of theirs share noise
    charge(ledger, "dataset:chestmnist", run_id="r4", **seeded)
    charge(ledger, H1, run_id="r5", randomness="seeded:0f0e", allow_seeded=True)
    charge(ledger, H1, run_id="r6")
    charge(ledger, H1, run_id="r7")  # secure runs never share a stream
    assert [s.run_id for s in ledger.history()] == ["r1", "r3", "r4", "r5", "r6", "r7"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"randomness": "seeded:AB12"},
            "randomness='seeded:AB12' to be one of: secure, seeded:<hex id>",
        ),
        ({"randomness": "seeded:"}, "randomness='seeded:'"),
        ({"randomness": "Secure"}, "randomness='Secure'"),
        ({"randomness": "os"}, "randomness='os'"),
        ({"allow_seeded": "yes"}, "allow_seeded='yes'"),
    ],
)
def test_bad_randomness_is_named(ledger: Ledger, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        charge(ledger, D, **kwargs)
    assert counts(ledger) == (0, 0, 0, 0)


# -- schema version 1 -------------------------------------------------------------------------

V1_SCHEMA = [  # privkit's ledger before the chain (commit 04e56be), statement for statement
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE budgets (id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, scope TEXT NOT NULL, "
    "epsilon REAL NOT NULL, delta REAL NOT NULL, actor TEXT NOT NULL)",
    "CREATE TABLE spends (id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, "
    "noise_multiplier REAL NOT NULL, sample_rate REAL NOT NULL, steps INTEGER NOT NULL, delta REAL NOT NULL, "
    "accountant TEXT NOT NULL, epsilon REAL NOT NULL, run_id TEXT NOT NULL, actor TEXT NOT NULL)",
    "CREATE TABLE spend_scopes (spend_id INTEGER NOT NULL REFERENCES spends (id), scope TEXT NOT NULL, "
    "PRIMARY KEY (spend_id, scope))",
    *(
        f"CREATE TRIGGER {t}_no_{op} BEFORE {op} ON {t} BEGIN SELECT RAISE(ABORT, 'the privkit ledger is "
        f"append-only: {op} on {t} refused'); END"
        for t in ("budgets", "spends", "spend_scopes")
        for op in ("UPDATE", "DELETE")
    ),
    f"PRAGMA application_id = {0x706B6C67}",
    "INSERT INTO meta VALUES ('application', 'privkit ledger'), ('schema_version', '1')",
]


def _v1_ledger(path: Path) -> None:
    """A version-1 file as that code wrote it: a budget, two spends (one on two scopes), a later budget."""
    db = sqlite3.connect(path)
    for statement in V1_SCHEMA:
        db.execute(statement)
    budget = "INSERT INTO budgets (scope, epsilon, delta, time, actor) VALUES (?, ?, ?, ?, ?)"
    spend = (
        "INSERT INTO spends (time, noise_multiplier, sample_rate, steps, delta, accountant, epsilon, "
        "run_id, actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    db.execute(budget, (D, 8.0, 1e-5, "2024-05-01T10:00:00.000000+00:00", "dpo"))
    db.execute(
        spend, ("2024-05-02T10:00:00.000000+00:00", 1.0, 0.05, 50, 1e-5, "prv", EPS, "a", "alice")
    )
    db.executemany("INSERT INTO spend_scopes VALUES (?, ?)", [(1, H1), (1, f"{D}/group:kids")])
    db.execute(budget, (H2, 5.0, 1e-5, "2024-05-03T10:00:00.000000+00:00", "dpo"))
    db.execute(
        spend, ("2024-05-04T10:00:00.000000+00:00", 1.0, 0.05, 50, 1e-5, "prv", EPS, "b", "bob")
    )
    db.execute("INSERT INTO spend_scopes VALUES (2, ?)", (H2,))
    db.commit()
    db.close()


def test_a_version_1_ledger_is_read_as_it_is_and_migrated_when_opened_for_writing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v1.sqlite"
    _v1_ledger(path)
    before = path.read_bytes()
    old = Ledger(path, read_only=True)
    spent = old.spent(D)
    assert [(s.run_id, s.randomness) for s in old.history()] == [
        ("a", "unrecorded"),
        ("b", "unrecorded"),
    ]
    assert [e.time[:10] for e in old.events()] == [
        "2024-05-01",
        "2024-05-02",
        "2024-05-03",
        "2024-05-04",
    ]
    with pytest.raises(LedgerError, match="schema version 1, without a hash chain"):
        old.verify()
    assert path.read_bytes() == before  # read-only: never migrated

    ledger = Ledger(path)  # opened for writing: migrated
    assert rows(path, "SELECT value FROM meta WHERE key = 'schema_version'") == [
        (str(SCHEMA_VERSION),)
    ]
    verified = ledger.verify()
    ((note,),) = rows(path, "SELECT value FROM meta WHERE key = 'migrated_1_to_2'")
    assert verified.events == 4 and note.endswith(f"4 events chained, head {verified.head}")
    events = ledger.events()
    assert [(e.kind, e.seq) for e in events] == [
        ("budget", 1),
        ("spend", 2),
        ("budget", 3),
        ("spend", 4),
    ]
    assert events[1].scopes == (H1, f"{D}/group:kids") and events[1].randomness == "unrecorded"
    assert dataclasses.replace(ledger.spent(D), budget=None) == dataclasses.replace(
        spent, budget=None
    )
    assert Ledger(path).verify() == verified  # migrated once
    new = charge(ledger, H1, run_id="c")
    assert (new.seq, new.prev, ledger.verify().events) == (5, verified.head, 5)
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute(
            "INSERT OR REPLACE INTO spends (id, time, noise_multiplier, sample_rate, steps, delta, "
            "accountant, epsilon, run_id, actor) VALUES (1, 't', 20, 0.05, 50, 1e-5, 'prv', 0.2, 'a', "
            "'x')"
        )
    db.close()
    tamper(
        path, "UPDATE spends SET epsilon = 0.2 WHERE id = 1"
    )  # the migrated rows are on the chain too
    with pytest.raises(LedgerTamperedError, match=r"spends row 1 \(event 2, run 'a'\)"):
        ledger.verify()


def test_a_version_1_ledger_that_cannot_be_migrated_says_how_to_read_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "v1.sqlite"
    _v1_ledger(path)
    monkeypatch.setattr(_ledger_sqlite, "BUSY_TIMEOUT_S", 0.1)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(
        "BEGIN IMMEDIATE"
    )  # another process is writing while this one would migrate the file
    try:
        with pytest.raises(
            LedgerError,
            match="stayed locked.*migrated to 2 when opened for writing; open it "
            "with read_only=True to read it as it is",
        ):
            Ledger(path)
        assert len(Ledger(path, read_only=True).history()) == 2
    finally:
        db.execute("ROLLBACK")
        db.close()
    assert rows(path, "SELECT value FROM meta WHERE key = 'schema_version'") == [("1",)]
