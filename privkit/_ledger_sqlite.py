"""The privacy-budget ledger's SQLite file: its events, guards, hash chain and schema versions.

:mod:`privkit.budget` decides what to charge and refuse; this module stores it. Public names are re-exported
there (``budget.Ledger``, ``budget.Spend``, ``budget.LedgerTamperedError``, ...).

**Events.** A row is one event: a budget set on a scope (``budgets``), a dataset registered with its size
(``datasets``), or a spend (``spends``: the mechanism a run executed, its randomness, and its scopes in
``spend_scopes``). All of them, in the order written, form one hash chain (:mod:`privkit._hashchain`): each
row holds its place ``seq``, the hash ``prev`` of the event before it, and its own ``hash``, over its content,
the spend's scopes included.

**Guards.** SQLite triggers refuse UPDATE and DELETE on every table, and an INSERT over an existing row:
``INSERT OR REPLACE`` (or ``REPLACE``) deletes the old row before inserting, and delete triggers do not fire
for that unless ``PRAGMA recursive_triggers`` is on, which does not persist in the file. Triggers can be
dropped and bytes edited, though; :meth:`LedgerFile.verify` checks the chain, that ``spend_scopes`` lists only
spends that exist, that each table's AUTOINCREMENT counter ends at its last row, and that the triggers are all
there. Every write verifies first, in its transaction, and refuses a ledger that does not verify.

**Anchors.** The chain has no key (a key in the file would be no secret from whoever can edit the file):
someone who rewrites the whole file with this code can recompute every hash, and deleting the last events
(with the counters) leaves a valid, shorter chain. What catches both is a head recorded outside the file, an
*anchor*: the head :meth:`privkit.budget.Ledger.charge` returns with each spend (recorded in the run's
provenance), the head ``privkit budget verify`` prints, or one a data steward keeps. ``verify(head=...)``
checks that the anchor is still the hash of one of the events, i.e. that nothing up to it was changed.

**Schema versions.** 1: budgets and spends, append-only by UPDATE and DELETE triggers. 2: adds the chain, the
reason of a budget, the randomness of a spend, registered datasets and the INSERT-over-a-row guards. A
version-1 file opened for writing is migrated in one transaction: the chain is computed over its rows as
found, in time order; its spends' randomness is ``"unrecorded"``; ``meta`` records the migration. A new file
is written as version 1 and migrated at once, so that every ledger has one layout. Opened read-only, a
version-1 file is read as it is, without a chain."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import getpass
import os
import socket
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar

from privkit import _hashchain

APPLICATION_ID = 0x706B6C67  # "pklg" in the SQLite header: this file is a privkit ledger
SCHEMA_VERSION = 2
BUSY_TIMEOUT_S = 30.0  # how long a charge waits for another process's transaction
UNRECORDED = "unrecorded"  # the randomness of spends charged before schema version 2
_OPS = (
    "UPDATE",
    "DELETE",
    "REPLACE",
)  # REPLACE: an INSERT over an existing row, as INSERT OR REPLACE does
_KEYS = {
    "budgets": ("id",),
    "datasets": ("id",),
    "spends": ("id",),
    "spend_scopes": ("spend_id", "scope"),
}
_TRIGGERS = [
    f"CREATE TRIGGER {t}_no_{op} BEFORE {'INSERT' if op == 'REPLACE' else op} ON {t} "
    + (
        f"WHEN EXISTS (SELECT 1 FROM {t} WHERE {' AND '.join(f'{k} = NEW.{k}' for k in keys)}) "
        if op == "REPLACE"
        else ""
    )
    + f"BEGIN SELECT RAISE(ABORT, 'the privkit ledger is append-only: {op} on {t} refused'); END"
    for t, keys in _KEYS.items()
    for op in _OPS
]
_SCHEMA_V1 = [
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
    f"PRAGMA application_id = {APPLICATION_ID}",
    "INSERT INTO meta VALUES ('application', 'privkit ledger'), ('schema_version', '1')",
]
_CHAIN_COLUMNS = (
    "seq INTEGER NOT NULL DEFAULT 0",
    "prev TEXT NOT NULL DEFAULT ''",
    "hash TEXT NOT NULL DEFAULT ''",
)
_MIGRATION_1_TO_2 = [  # then the chain is filled in, and _TRIGGERS created
    *(
        f"DROP TRIGGER {t}_no_{op}"
        for t in ("budgets", "spends", "spend_scopes")
        for op in ("UPDATE", "DELETE")
    ),
    "ALTER TABLE budgets ADD COLUMN reason TEXT",
    f"ALTER TABLE spends ADD COLUMN randomness TEXT NOT NULL DEFAULT '{UNRECORDED}'",
    *(
        f"ALTER TABLE {t} ADD COLUMN {column}"
        for t in ("budgets", "spends")
        for column in _CHAIN_COLUMNS
    ),
    "CREATE TABLE datasets (id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, name TEXT NOT NULL, "
    f"size INTEGER NOT NULL, actor TEXT NOT NULL, description TEXT, {', '.join(_CHAIN_COLUMNS)})",
]
_V1_COLUMNS = {
    "reason": "NULL",
    "randomness": f"'{UNRECORDED}'",
    "seq": "0",
    "prev": "''",
    "hash": "''",
}


class LedgerError(RuntimeError):
    """The ledger cannot be used: not a ledger, read-only, or locked too long."""


# The events, one per row. seq, prev and hash are their link in the chain; hash is the chain's head right
# after the event, an anchor to record.


@dataclass(frozen=True)
class Budget:
    """A budget set on a scope; the scope's current budget is its last."""

    kind: ClassVar[str] = "budget"
    table: ClassVar[str] = "budgets"

    scope: str
    epsilon: float
    delta: float
    time: str  # UTC, ISO 8601, when it was set
    actor: str
    reason: str | None  # why it was set; required to raise a budget
    id: int
    seq: int
    prev: str
    hash: str


@dataclass(frozen=True)
class Registration:
    """A dataset privkit does not know, registered with its number of records."""

    kind: ClassVar[str] = "dataset"
    table: ClassVar[str] = "datasets"

    name: str
    size: int
    time: str
    actor: str
    description: str | None
    id: int
    seq: int
    prev: str
    hash: str


@dataclass(frozen=True)
class Spend:
    """One charged run: the mechanism it ran, on which scopes, with which randomness, when, and who ran it."""

    kind: ClassVar[str] = "spend"
    table: ClassVar[str] = "spends"

    id: int
    time: str  # UTC, ISO 8601
    scopes: tuple[str, ...]
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float  # the run's own delta
    accountant: str
    epsilon: float  # this run alone, at its own delta
    run_id: str
    actor: str
    randomness: (
        str  # "secure", "seeded:<hex id>", or "unrecorded" (charged before schema version 2)
    )
    seq: int
    prev: str
    hash: str


Event = Budget | Registration | Spend


@dataclass(frozen=True)
class Verified:
    """An intact chain: its ``head`` (the last event's hash; ``"0" * 64`` when empty) and number of
    ``events``; with an anchor, ``anchor`` is the place of the event whose hash it is (0: the start)."""

    head: str
    events: int
    anchor: int | None = None


class LedgerTamperedError(LedgerError):
    """The ledger does not verify: its file was changed outside privkit.

    Attributes ``table``, ``row_id`` and ``seq`` (its place in the chain) of the first bad row, ``None`` when
    the fault is not one row; ``problem``, what is wrong.
    """

    @classmethod
    def at(cls, path: str | Path, problem: str, event: Event | None = None) -> LedgerTamperedError:
        where = ""
        if event is not None:
            run = f", run {event.run_id!r}" if isinstance(event, Spend) else ""
            where = f"{event.table} row {event.id} (event {event.seq}{run}): "
        error = cls(
            f"The ledger {path} was changed outside privkit: {where}{problem}. privkit writes "
            "nothing to a ledger that does not verify; restore it from a copy whose head you "
            "recorded (privkit budget verify --head HASH)."
        )
        # attributes set here, not in __init__, so that it pickles (across processes)
        error.table, error.row_id, error.seq = (
            (event.table, event.id, event.seq) if event else (None,) * 3
        )
        error.problem = problem
        return error


@dataclass(frozen=True)
class Check:
    """What a charge composed for one budget it had to satisfy, for one kind of patient (PostgreSQL keeps
    these with the spend, for an audit; :mod:`privkit._ledger_postgres`)."""

    spend_id: int  # 0 until the spend is stored
    budget_id: int
    institution: str  # the patient's institution, or "" for one the ledger had not seen
    group: str  # likewise
    spends: tuple[int, ...]  # the ids of the spends composed with the run, in order
    epsilon: float  # their composition with the run, at the budget's delta


@dataclass(frozen=True)
class State:
    """Every row of the ledger (that its reader may see), read in one snapshot."""

    version: int
    budgets: list[Budget]  # each in order of id
    datasets: list[Registration]
    spends: list[Spend]
    stray_scopes: list[int]  # spend ids in spend_scopes that are not in spends
    # the datasets its reader may see (PostgreSQL); None: every one
    visible: frozenset[str] | None = None
    reader: str | None = None  # who reads (PostgreSQL: the database user)
    checks: list[Check] = dataclasses.field(
        default_factory=list
    )  # PostgreSQL's record of each charge

    @functools.cached_property
    def events(self) -> list[Event]:
        """In chain order (in time order before version 2, where every seq is 0)."""
        every = [*self.budgets, *self.datasets, *self.spends]
        return sorted(every, key=lambda e: (e.seq, e.time, e.kind, e.id))

    @property
    def head(self) -> str:
        return self.events[-1].hash if self.events else _hashchain.GENESIS

    @property
    def current(self) -> dict[str, Budget]:
        """The current budget of each scope: its last."""
        return {b.scope: b for b in self.budgets}


def default_path() -> Path:
    """``$PRIVKIT_LEDGER``, else ``$XDG_DATA_HOME/privkit/ledger.sqlite``, else under ``~/.local/share``."""
    if os.environ.get("PRIVKIT_LEDGER"):
        return Path(os.environ["PRIVKIT_LEDGER"]).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME", "")
    data_home = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return data_home / "privkit" / "ledger.sqlite"


def now() -> str:
    """UTC, ISO 8601, in microseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def default_actor() -> str:
    """``user@host``: who set a budget, when no one is named."""
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:  # no user name in some containers
        return f"uid {os.getuid()}@{socket.gethostname()}"


class LedgerFile:
    """A ledger's SQLite file: opened (created, checked, migrated), read, verified and appended to.

    Args:
        path: The ledger file, created with its folders if missing; default :func:`default_path`.
        read_only: Open it without write access (``mode=ro``): reads work, writes raise; never creates it,
            never migrates it.

    Raises:
        LedgerError: If the file is not a privkit ledger, cannot be created, or (schema version 1) cannot be
            migrated.
    """

    def __init__(self, path: str | Path | None = None, *, read_only: bool = False):
        self.path = Path(path).expanduser() if path is not None else default_path()
        self.location = str(self.path)
        self.read_only = read_only
        if read_only and not self.path.is_file():
            raise LedgerError(f"No ledger at {self.path} (opened read-only, so none was created).")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise LedgerError(
                f"Cannot create the folder of the ledger {self.path}: {error}."
            ) from error
        with self._transaction(write=False) as db:
            app = db.execute("PRAGMA application_id").fetchone()[0]
            tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app == 0 and tables == 0 and not read_only:  # a new (or empty) file: write the schema
            with self._transaction(write=True) as db:
                if (
                    db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
                ):  # unless another did
                    for statement in _SCHEMA_V1:
                        db.execute(statement)
                    _migrate(db, record=False)
                app = db.execute("PRAGMA application_id").fetchone()[0]
        if app != APPLICATION_ID:
            what = "an empty file," if tables == 0 else "an SQLite database but"
            raise LedgerError(f"{self.path} is {what} not a privkit ledger; it was left unchanged.")
        with self._transaction(write=False) as db:
            version = _version(db)
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"The ledger {self.path} has schema version {version}; this privkit reads up "
                f"to {SCHEMA_VERSION}. Upgrade privkit."
            )
        if version < SCHEMA_VERSION and not read_only:
            try:
                with self._transaction(write=True) as db:
                    if _version(db) < SCHEMA_VERSION:  # unless another process did
                        _migrate(db, record=True)
            except LedgerError as error:
                raise LedgerError(
                    f"{error} The ledger has schema version {version}, migrated to "
                    f"{SCHEMA_VERSION} when opened for writing; open it with read_only=True to "
                    "read it as it is."
                ) from error

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}{', read_only=True' if self.read_only else ''})"

    @contextlib.contextmanager
    def _transaction(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        db = None
        try:
            uri = f"file:{urllib.parse.quote(str(self.path))}?mode={'ro' if self.read_only else 'rwc'}"
            db = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            db.execute(
                "BEGIN IMMEDIATE" if write else "BEGIN"
            )  # IMMEDIATE: one writer at a time, from here
            yield db
            db.execute("COMMIT")
        except sqlite3.Error as error:
            text = str(error)
            if "not a database" in text:
                message = (
                    f"{self.path} is not a privkit ledger (not an SQLite database: {text}); left "
                    "unchanged."
                )
            elif "locked" in text or "busy" in text:
                message = (
                    f"The ledger {self.path} stayed locked {BUSY_TIMEOUT_S:g} s ({text}); nothing was "
                    "changed."
                )
            elif write and any(w in text for w in ("readonly", "read-only", "unable to open")):
                message = (
                    f"Cannot write to the ledger {self.path} ({text}): the file or its folder is "
                    "read-only here. Nothing was changed."
                )
            else:
                message = f"Cannot use the ledger {self.path}: {text}." + (
                    " Nothing was changed." * write
                )
            raise LedgerError(message) from error
        finally:
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                db.close()

    def read(self) -> State:
        with self._transaction(write=False) as db:
            return _load(db)

    def _verify(self, db: sqlite3.Connection, state: State, head: str | None = None) -> Verified:
        """Check ``state`` and the file's guards; raise :class:`LedgerTamperedError` at the first fault."""
        if state.version < 2:
            raise LedgerError(
                f"The ledger {self.path} has schema version {state.version}, without a hash "
                "chain; it gets one when opened for writing (Ledger(path), privkit budget "
                "set/charge)."
            )
        events = state.events
        broken = _hashchain.first_break(events)
        if broken is not None:
            raise LedgerTamperedError.at(self.path, broken[1], events[broken[0]])
        if state.stray_scopes:
            stray = state.stray_scopes[0]
            raise LedgerTamperedError.at(
                self.path,
                f"spend_scopes lists spend {stray}, which is not in spends: a row was deleted",
            )
        counters = dict(db.execute("SELECT name, seq FROM sqlite_sequence"))
        tables = {"budgets": state.budgets, "datasets": state.datasets, "spends": state.spends}
        for table, rows in tables.items():
            last = max((e.id for e in rows), default=0)
            if counters.get(table, 0) != last:
                raise LedgerTamperedError.at(
                    self.path,
                    f"{table} ends at row {last}, but its AUTOINCREMENT "
                    f"counter is at {counters.get(table, 0)}: its last rows were "
                    "deleted",
                )
        triggers = {
            row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        }
        missing = sorted({f"{t}_no_{op}" for t in _KEYS for op in _OPS} - triggers)
        if missing:
            raise LedgerTamperedError.at(
                self.path, f"its append-only triggers {missing} were dropped"
            )
        if head is None:
            return Verified(state.head, len(events))
        places = {_hashchain.GENESIS: 0} | {e.hash: e.seq for e in events}
        if head not in places:
            raise LedgerTamperedError.at(
                self.path,
                f"the head {head} recorded earlier is not on its "
                "chain: events up to it were rewritten, or it is another "
                "ledger",
            )
        return Verified(state.head, len(events), places[head])

    def write(self, decide: Callable[[State], tuple[Event, Sequence[Check]]]) -> Event:
        """In one write transaction on a ledger that verifies, let ``decide`` make the event from what the
        ledger holds (or refuse: nothing is written), and append it; returns it as stored."""
        with self._transaction(write=True) as db:
            state = _load(db)
            self._verify(db, state)
            event, _ = decide(
                state
            )  # the checks are for a database that cannot compose them itself
            return self._append(db, state, event)

    def import_events(self, events: Sequence[Event]) -> None:
        """Write ``events`` (a whole ledger's, in chain order) as they are into this ledger, which has none;
        they must verify."""
        with self._transaction(write=True) as db:
            state = _load(db)
            if state.events:
                raise LedgerError(
                    f"Events are imported into a new ledger only; {self.path} has "
                    f"{len(state.events)}. Nothing was changed."
                )
            for event in events:
                _insert(db, event)
            self._verify(db, _load(db))

    def _append(self, db: sqlite3.Connection, state: State, event: Event) -> Event:
        """Insert ``event`` as the chain's next link, with the next id of its table; return it as stored."""
        same = [e for e in state.events if e.kind == event.kind]
        event = dataclasses.replace(event, id=max((e.id for e in same), default=0) + 1)
        event = _hashchain.link(event, seq=len(state.events) + 1, prev=state.head)
        _insert(db, event)
        return event

    def verify(self, *, head: str | None = None) -> Verified:
        """Check the hash chain of every event and the file's guards; with ``head`` (a SHA-256 hex digest in
        lower case), that this anchor is on the chain. See :meth:`privkit.budget.Ledger.verify`."""
        with self._transaction(write=False) as db:
            return self._verify(db, _load(db), head)


def _insert(db: sqlite3.Connection, event: Event) -> None:
    """``event``'s row, as it is (and a spend's scopes)."""
    row = {f.name: getattr(event, f.name) for f in dataclasses.fields(event) if f.name != "scopes"}
    db.execute(
        f"INSERT INTO {event.table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
        tuple(row.values()),
    )
    if isinstance(event, Spend):
        db.executemany(
            "INSERT INTO spend_scopes VALUES (?, ?)", [(event.id, s) for s in event.scopes]
        )


def _migrate(db: sqlite3.Connection, *, record: bool) -> None:
    """Schema 1 to 2 in ``db``'s transaction: new columns, the chain over the rows as found, the triggers."""
    for statement in _MIGRATION_1_TO_2:
        db.execute(statement)
    state = _load(db)  # meta still says version 1: every seq 0, so the events come in time order
    prev = _hashchain.GENESIS
    for seq, event in enumerate(state.events, 1):
        linked = _hashchain.link(event, seq=seq, prev=prev)
        db.execute(
            f"UPDATE {event.table} SET seq = ?, prev = ?, hash = ? WHERE id = ?",
            (linked.seq, linked.prev, linked.hash, linked.id),
        )
        prev = linked.hash
    for statement in _TRIGGERS:
        db.execute(statement)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
    if record:
        db.execute(
            "INSERT INTO meta VALUES ('migrated_1_to_2', ?)",
            (f"at {now()} by {default_actor()}: {len(state.events)} events chained, head {prev}",),
        )


def _version(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])


def _select(db: sqlite3.Connection, cls: type, version: int) -> list[dict]:
    """The rows of ``cls``'s table as field-to-value dicts (``scopes`` aside); version 1 lacks columns."""
    names = [f.name for f in dataclasses.fields(cls) if f.name != "scopes"]
    columns = [_V1_COLUMNS.get(n, n) if version < 2 else n for n in names]
    rows = db.execute(f"SELECT {', '.join(columns)} FROM {cls.table} ORDER BY id")
    return [dict(zip(names, row)) for row in rows]


def _load(db: sqlite3.Connection) -> State:
    """Every row of the ledger, in ``db``'s snapshot."""
    version = _version(db)
    scopes: dict[int, list[str]] = {}
    for spend_id, scope in db.execute("SELECT spend_id, scope FROM spend_scopes ORDER BY rowid"):
        scopes.setdefault(spend_id, []).append(scope)
    spends = [
        Spend(**row, scopes=tuple(scopes.get(row["id"], ()))) for row in _select(db, Spend, version)
    ]
    return State(
        version=version,
        budgets=[Budget(**row) for row in _select(db, Budget, version)],
        datasets=[Registration(**row) for row in _select(db, Registration, version)]
        if version >= 2
        else [],
        spends=spends,
        stray_scopes=sorted(set(scopes) - {s.id for s in spends}),
    )
