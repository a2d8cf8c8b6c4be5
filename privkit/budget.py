"""Privacy budgets: a ledger that refuses a training run once a scope's budget is spent.

A budget ``(epsilon, delta)`` belongs to a *scope*, a set of records: ``dataset:<name>``, an institution in
it (``dataset:<name>/institution:<id>``), a patient group at every institution (``dataset:<name>/group:<id>``)
or at one (``dataset:<name>/institution:<id>/group:<id>``). Each record belongs to one institution and one group.

**What is checked.** A patient's privacy loss is the composition of every spend on a scope containing them, and a
budget bounds the loss of each patient in its scope. Before a run reads any data, :meth:`Ledger.charge` takes the
mechanism it is about to run and checks, for every kind of patient it touches (each institution and group the
ledger knows, and "any other"), every budget on a scope containing that patient. One budget exceeded and the run
is refused with :class:`BudgetExceededError`, and nothing is recorded. So a spend on the dataset counts against
every institution's budget, and one on a group against each institution's; spends on two institutions (or two
groups) never meet in one patient and do not add up (parallel composition). A scope with no budget on it or
above it has no limit: its spends are recorded, and ``show`` says "no budget". A run without noise has infinite
epsilon and is refused by any budget.

**Epsilon and delta.** The spent epsilon composes the mechanisms (noise multiplier, sample rate, steps) of all
spends with the accountant (:func:`privkit.accounting.compose`) at the budget's delta: this is what a budget is
checked against. The sum of the runs' own epsilons, each at the run's own delta, is reported too, with the sum
of those deltas: basic composition, always valid, looser. A scope without a budget reports the composed epsilon
at the smallest delta of a budget containing it, else at the smallest delta of its runs. With ``"prv"`` (the
default), spends of more than ``PRV_MAX_MECHANISMS`` different (noise, sample rate) pairs, or epsilons too
large for PRV, are composed with RDP instead: a valid bound too, a little looser, and fast.

**No refunds.** The charge is committed before the data are read, and a run that crashes later is not refunded:
it has touched the data, and what it computed (a partial model, logs, timings) may already have left the
process. Refunds would let a run that crashes, is killed, or crashes on purpose, look at the data for free, as
often as it likes. The audit trail is append-only: SQLite triggers refuse UPDATE and DELETE on budgets and
spends; a changed budget is a new row, and the old ones stay.

**Concurrency.** Each check-and-charge is one ``BEGIN IMMEDIATE`` transaction: of two processes racing for the
last of a budget, one waits for the other and sees its spend.

Errors: :class:`LedgerError` (a ``RuntimeError``: not a ledger, read-only, locked) and its subclass
:class:`BudgetExceededError` (not an ``OSError``, so handlers of file errors do not swallow a refusal); bad
arguments raise ``ValueError``.

>>> import pathlib, tempfile
>>> ledger = Ledger(pathlib.Path(tempfile.mkdtemp()) / "ledger.sqlite")
>>> _ = ledger.set_budget("dataset:pneumoniamnist", epsilon=5.0, delta=1e-5)
>>> run = dict(noise_multiplier=1.0, sample_rate=256 / 4708, steps=100, delta=1e-5, actor="me")
>>> spend = ledger.charge(["dataset:pneumoniamnist/institution:h1"], run_id="a", **run)
>>> round(spend.epsilon, 2), round(ledger.spent("dataset:pneumoniamnist").remaining, 2)
(3.82, 1.18)
>>> ledger.charge(["dataset:pneumoniamnist"], run_id="b", **run)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
privkit.budget.BudgetExceededError: Privacy budget of dataset:pneumoniamnist exceeded: ...
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import getpass
import math
import os
import re
import socket
import sqlite3
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from privkit import accounting
from privkit._validate import in_range, one_of

APPLICATION_ID = 0x706B6C67  # "pklg" in the SQLite header: this file is a privkit ledger
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0  # how long a charge waits for another process's transaction
ACCOUNTANTS = ("prv", "rdp")  # upper bounds only; "gdp" can under-report
PRV_MAX_MECHANISMS = 8  # beyond, PRV gets slow (20 different runs: ~30 s), and "prv" composes with RDP
SCOPE_FORMS = ("dataset:<name>", "dataset:<name>/institution:<id>", "dataset:<name>/group:<id>",
               "dataset:<name>/institution:<id>/group:<id>")  # fmt: skip
_NAME = r"[A-Za-z0-9_.-]+"
_SCOPE = re.compile(rf"dataset:({_NAME})(?:/institution:({_NAME}))?(?:/group:({_NAME}))?")
_OTHER = ""  # in a patient cell: an institution or a group the ledger has never seen
_TABLES = ("budgets", "spends", "spend_scopes")  # append-only
_SCHEMA = [
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE budgets (id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, scope TEXT NOT NULL, "
    "epsilon REAL NOT NULL, delta REAL NOT NULL, actor TEXT NOT NULL)",
    "CREATE TABLE spends (id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, noise_multiplier REAL NOT NULL, "
    "sample_rate REAL NOT NULL, steps INTEGER NOT NULL, delta REAL NOT NULL, accountant TEXT NOT NULL, "
    "epsilon REAL NOT NULL, run_id TEXT NOT NULL, actor TEXT NOT NULL)",
    "CREATE TABLE spend_scopes (spend_id INTEGER NOT NULL REFERENCES spends (id), scope TEXT NOT NULL, "
    "PRIMARY KEY (spend_id, scope))",
    *(f"CREATE TRIGGER {t}_no_{op} BEFORE {op} ON {t} BEGIN SELECT RAISE(ABORT, 'the privkit ledger is "
      f"append-only: {op} on {t} refused'); END" for t in _TABLES for op in ("UPDATE", "DELETE")),
    f"PRAGMA application_id = {APPLICATION_ID}",
    f"INSERT INTO meta VALUES ('application', 'privkit ledger'), ('schema_version', '{SCHEMA_VERSION}')",
]  # fmt: skip


class LedgerError(RuntimeError):
    """The ledger cannot be used: not a ledger, read-only, or locked too long."""


class BudgetExceededError(LedgerError):
    """A charge refused, as it would exceed ``budget``; nothing was charged.

    Attributes ``budget``, ``spent``, ``requested`` (the run alone), ``composed`` (spent and run), ``remaining``.
    """

    @classmethod
    def of(cls, budget: Budget, *, spent: float, requested: float, composed: float, run_id: str) -> BudgetExceededError:
        remaining = max(0.0, budget.epsilon - spent)
        error = cls(
            f"Privacy budget of {budget.scope} exceeded: budget epsilon={budget.epsilon:g} (delta={budget.delta:g}), "
            f"spent {spent:.4g}, requested {requested:.4g} (this run alone; {composed:.4g} composed with the spent), "
            f"remaining {remaining:.4g}. Run {run_id!r} refused; nothing was charged."
        )  # attributes set here, not in __init__, so that it pickles (across processes)
        error.budget, error.spent, error.requested, error.composed, error.remaining = (
            budget, spent, requested, composed, remaining)  # fmt: skip
        return error


@dataclass(frozen=True)
class Scope:
    """A set of records: a dataset, optionally narrowed to an institution and/or a patient group."""

    dataset: str
    institution: str | None = None
    group: str | None = None

    def __str__(self) -> str:
        parts = [("dataset", self.dataset), ("institution", self.institution), ("group", self.group)]
        return "/".join(f"{kind}:{name}" for kind, name in parts if name is not None)

    @property
    def parent(self) -> Scope | None:
        """The scope one level up (the group, else the institution dropped); None for a dataset."""
        if self.group is not None:
            return Scope(self.dataset, self.institution)
        return Scope(self.dataset) if self.institution is not None else None

    @property
    def chain(self) -> tuple[Scope, ...]:
        """The scopes containing all of this one's records, widest first, ending with itself."""
        d, i, g = self.dataset, self.institution, self.group
        return tuple(dict.fromkeys([Scope(d), Scope(d, i), Scope(d, None, g), self]))

    def contains(self, other: Scope) -> bool:
        """Whether every record of ``other`` is in this scope."""
        return self.dataset == other.dataset and self.institution in (None, other.institution) and self.group in (
            None, other.group)  # fmt: skip

    def overlaps(self, other: Scope) -> bool:
        """Whether some record can be in both scopes."""
        pairs = ((self.institution, other.institution), (self.group, other.group))
        return self.dataset == other.dataset and all(None in (a, b) or a == b for a, b in pairs)

    def _key(self) -> tuple[str, str, str]:  # widest first
        return self.dataset, self.institution or "", self.group or ""


def parse_scope(text: str) -> Scope:
    """Parse ``dataset:<name>[/institution:<id>][/group:<id>]`` (names ``[A-Za-z0-9_.-]+``).

    >>> parse_scope("dataset:pneumoniamnist/institution:h1").parent
    Scope(dataset='pneumoniamnist', institution=None, group=None)
    >>> parse_scope("hospital:h1")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Unknown scope='hospital:h1'; expected one of: dataset:<name>, ...
    """
    scope = _parse(text) if isinstance(text, str) else None
    if scope is None:
        raise ValueError(f"Unknown scope={text!r}; expected one of: {', '.join(SCOPE_FORMS)} "
                         "(names of letters, digits, '_', '.', '-').")  # fmt: skip
    return scope


@functools.lru_cache(maxsize=4096)  # the scopes of stored spends are parsed again at every check
def _parse(text: str) -> Scope | None:
    match = _SCOPE.fullmatch(text)
    return Scope(*match.groups()) if match else None


@dataclass(frozen=True)
class Budget:
    scope: str
    epsilon: float
    delta: float
    time: str  # UTC, ISO 8601, when it was set
    actor: str


@dataclass(frozen=True)
class Spend:
    """One charged run: the mechanism it ran, on which scopes, when, and who ran it."""

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


@dataclass(frozen=True)
class Spent:
    """What a scope has spent, for its worst-off patient."""

    scope: str
    epsilon: float  # all spends composed by the accountant, at `delta`
    delta: float | None  # the budget's delta (see the module's docstring); None: nothing spent
    epsilon_sum: float  # basic composition: the runs' own epsilons added, ...
    delta_sum: float  # ... at their deltas added
    n_spends: int  # spends that touched some record of the scope
    budget: Budget | None
    remaining: float | None  # budget.epsilon - epsilon; None without a budget on the scope


def default_path() -> Path:
    """``$PRIVKIT_LEDGER``, else ``$XDG_DATA_HOME/privkit/ledger.sqlite``, else under ``~/.local/share``."""
    if os.environ.get("PRIVKIT_LEDGER"):
        return Path(os.environ["PRIVKIT_LEDGER"]).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "share") / "privkit" / "ledger.sqlite"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def default_actor() -> str:
    """``user@host``: who set a budget, when no one is named."""
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:  # no user name in some containers
        return f"uid {os.getuid()}@{socket.gethostname()}"


@functools.lru_cache(maxsize=4096)
def _composed(mechanisms: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    if accountant == "prv" and len({(s, q) for s, q, n in mechanisms if n}) <= PRV_MAX_MECHANISMS:
        with contextlib.suppress(RuntimeError):  # PRV fails at epsilons in the hundreds
            return accounting.compose(mechanisms, delta=delta, accountant="prv")
    return accounting.compose(mechanisms, delta=delta, accountant="rdp")


def _epsilon(spends: Iterable[Spend], delta: float, accountant: str, extra: tuple = ()) -> float:
    mechanisms = [(s.noise_multiplier, s.sample_rate, s.steps) for s in spends] + list(extra)
    return _composed(tuple(sorted(mechanisms)), delta, accountant)


def _cells(scope: Scope, known: Iterable[Scope]) -> list[Scope]:
    """The kinds of patient in ``scope``: each known (institution, group), or "other"."""
    same = [k for k in known if k.dataset == scope.dataset]
    ids = [[mine] if mine is not None else sorted({getattr(k, f) for k in same} - {None}) + [_OTHER]
           for mine, f in ((scope.institution, "institution"), (scope.group, "group"))]  # fmt: skip
    return [Scope(scope.dataset, i, g) for i in ids[0] for g in ids[1]]


def _touching(spends: Iterable[Spend], scope: Scope) -> list[Spend]:
    return [s for s in spends if any(parse_scope(x).overlaps(scope) for x in s.scopes)]


class Ledger:
    """An SQLite file of budgets and spends; see the module's docstring.

    Args:
        path: The ledger file, created with its folders if missing; default :func:`default_path`.
        read_only: Open it without write access (``mode=ro``): reads work, writes raise; never creates it.

    Raises:
        LedgerError: If the file is not a privkit ledger, or cannot be created.
    """

    def __init__(self, path: str | Path | None = None, *, read_only: bool = False):
        self.path = Path(path).expanduser() if path is not None else default_path()
        self.read_only = read_only
        if read_only and not self.path.is_file():
            raise LedgerError(f"No ledger at {self.path} (opened read-only, so none was created).")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise LedgerError(f"Cannot create the folder of the ledger {self.path}: {error}.") from error
        with self._transaction(write=False) as db:
            app = db.execute("PRAGMA application_id").fetchone()[0]
            tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app == 0 and tables == 0 and not read_only:  # a new (or empty) file: write the schema
            with self._transaction(write=True) as db:
                if db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:  # unless another process did
                    for statement in _SCHEMA:
                        db.execute(statement)
                app = db.execute("PRAGMA application_id").fetchone()[0]
        if app != APPLICATION_ID:
            what = "an empty file," if tables == 0 else "an SQLite database but"
            raise LedgerError(f"{self.path} is {what} not a privkit ledger; it was left unchanged.")
        with self._transaction(write=False) as db:
            version = int(db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise LedgerError(f"The ledger {self.path} has schema version {version}; this privkit reads up to "
                              f"{SCHEMA_VERSION}. Upgrade privkit.")  # fmt: skip

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r}{', read_only=True' if self.read_only else ''})"

    @contextlib.contextmanager
    def _transaction(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        db = None
        try:
            uri = f"file:{urllib.parse.quote(str(self.path))}?mode={'ro' if self.read_only else 'rwc'}"
            db = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")  # IMMEDIATE: one writer at a time, from here
            yield db
            db.execute("COMMIT")
        except sqlite3.Error as error:
            text = str(error)
            if "not a database" in text:
                message = f"{self.path} is not a privkit ledger (not an SQLite database: {text}); left unchanged."
            elif "locked" in text or "busy" in text:
                message = f"The ledger {self.path} stayed locked {BUSY_TIMEOUT_S:g} s ({text}); nothing was changed."
            elif write and any(w in text for w in ("readonly", "read-only", "unable to open")):
                message = (f"Cannot write to the ledger {self.path} ({text}): the file or its folder is read-only "
                           "here. Nothing was changed.")  # fmt: skip
            else:
                message = f"Cannot use the ledger {self.path}: {text}." + (" Nothing was changed." if write else "")
            raise LedgerError(message) from error
        finally:
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                db.close()

    def _read(self, db: sqlite3.Connection | None = None) -> tuple[dict[str, Budget], list[Spend]]:
        """The current budget of each scope, and every spend; in one snapshot."""
        if db is None:
            with self._transaction(write=False) as db:
                return self._read(db)
        budgets = {row[0]: Budget(*row) for row in db.execute("SELECT scope, epsilon, delta, time, actor FROM "
                   "budgets WHERE id IN (SELECT max(id) FROM budgets GROUP BY scope)")}  # fmt: skip
        scopes: dict[int, list[str]] = {}
        for spend_id, scope in db.execute("SELECT spend_id, scope FROM spend_scopes ORDER BY rowid"):
            scopes.setdefault(spend_id, []).append(scope)
        rows = db.execute("SELECT id, time, noise_multiplier, sample_rate, steps, delta, accountant, epsilon, "
                          "run_id, actor FROM spends ORDER BY id")  # fmt: skip
        return budgets, [Spend(i, t, tuple(scopes.get(i, ())), *rest) for i, t, *rest in rows]

    @staticmethod
    def _spent(scope: Scope, budgets: dict[str, Budget], spends: list[Spend], accountant: str,
               delta: float | None = None) -> Spent:  # fmt: skip
        own, mine = budgets.get(str(scope)), _touching(spends, scope)
        if delta is None:
            above = [budgets[str(s)].delta for s in scope.chain if str(s) in budgets]
            delta = own.delta if own else min(above or [s.delta for s in mine] or [None])
        known = [parse_scope(s) for s in budgets] + [parse_scope(x) for s in mine for x in s.scopes]
        epsilon, sums = 0.0, (0.0, 0.0)
        for cell in _cells(scope, known) if mine else []:  # the worst-off kind of patient
            here = _touching(mine, cell)
            epsilon = max(epsilon, _epsilon(here, delta, accountant))
            sums = max(sums, (sum(s.epsilon for s in here), sum(s.delta for s in here)))
        return Spent(str(scope), epsilon, delta, *sums, len(mine), own, own.epsilon - epsilon if own else None)

    def set_budget(self, scope: str, *, epsilon: float, delta: float, actor: str | None = None,
                   accountant: str = "prv") -> Budget:  # fmt: skip
        """Set or change the budget of ``scope``; every change stays in the ledger.

        Raises:
            ValueError: If ``epsilon`` is not in (0, inf), ``delta`` not in (0, 1), the scope is malformed, or
                the scope has already spent more than ``epsilon`` (at ``delta``).
            LedgerError: If the ledger is read-only.
        """
        parsed = parse_scope(scope)
        in_range(0, math.inf, low_inclusive=False, high_inclusive=False, epsilon=epsilon)
        in_range(0, 1, low_inclusive=False, high_inclusive=False, delta=delta)
        one_of(ACCOUNTANTS, accountant=accountant)
        with self._transaction(write=True) as db:
            spent = self._spent(parsed, *self._read(db), accountant, delta=delta)
            if spent.epsilon > epsilon:
                raise ValueError(f"Expected epsilon={epsilon!r} >= {spent.epsilon:.4g}, what {parsed} has already "
                                 f"spent at delta={delta:g} ({spent.n_spends} spends); a budget cannot go below it.")
            budget = Budget(str(parsed), float(epsilon), float(delta), _now(), actor or default_actor())
            db.execute("INSERT INTO budgets (scope, epsilon, delta, time, actor) VALUES (?, ?, ?, ?, ?)",
                       (budget.scope, budget.epsilon, budget.delta, budget.time, budget.actor))  # fmt: skip
        return budget

    def charge(self, scopes: Sequence[str], *, noise_multiplier: float, sample_rate: float, steps: int,
               delta: float, run_id: str, actor: str, accountant: str = "prv") -> Spend:  # fmt: skip
        """Record the spend of a run about to read the records of ``scopes``, or refuse it. Call it first.

        Args:
            scopes: The scopes whose records the run reads (one spend, listed on each of them).
            noise_multiplier, sample_rate, steps: The DP-SGD mechanism the run will execute.
            delta: The run's own delta (for its epsilon alone, and the summed bound).
            run_id, actor: What runs, and who or what runs it (a user, a service, a host).
            accountant: ``"prv"`` or ``"rdp"``: the run's epsilon and the composition checked.

        Returns:
            The recorded :class:`Spend`.

        Raises:
            BudgetExceededError: If a budget would be exceeded; nothing is recorded then.
            ValueError: On malformed scopes or mechanism values.
            LedgerError: If the ledger is read-only or stays locked.
        """
        if isinstance(scopes, str) or not scopes:
            raise ValueError(f"Expected scopes={scopes!r} to be a non-empty list of scopes.")
        parsed = list(dict.fromkeys(parse_scope(s) for s in scopes))
        for name, value in (("run_id", run_id), ("actor", actor)):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"Expected {name}={value!r} to be a non-empty string.")
        one_of(ACCOUNTANTS, accountant=accountant)
        mechanism = dict(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=delta)
        try:
            own = accounting.epsilon(**mechanism, accountant=accountant)
        except RuntimeError:  # PRV fails at epsilons in the hundreds
            own = accounting.epsilon(**mechanism, accountant="rdp")
        new = ((float(noise_multiplier), float(sample_rate), steps),)
        with self._transaction(write=True) as db:
            budgets, spends = self._read(db)
            known = [parse_scope(s) for s in budgets] + [parse_scope(x) for s in spends for x in s.scopes] + parsed
            binding = sorted((parse_scope(b) for b in budgets), key=Scope._key)
            for cell in sorted({c for s in parsed for c in _cells(s, known)}, key=Scope._key):
                here = _touching(spends, cell)
                for budget in (budgets[str(b)] for b in binding if b.contains(cell)):
                    composed = _epsilon(here, budget.delta, accountant, new)
                    if composed > budget.epsilon:
                        raise BudgetExceededError.of(budget, spent=_epsilon(here, budget.delta, accountant),
                                                     requested=_epsilon([], budget.delta, accountant, new),
                                                     composed=composed, run_id=run_id)  # fmt: skip
            spend = Spend(0, _now(), tuple(map(str, parsed)), *new[0], delta, accountant, own, run_id, actor)
            values = (spend.time, *new[0], delta, accountant, own, run_id, actor)
            spend_id = db.execute("INSERT INTO spends (time, noise_multiplier, sample_rate, steps, delta, accountant, "
                                  "epsilon, run_id, actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", values).lastrowid
            db.executemany("INSERT INTO spend_scopes VALUES (?, ?)", [(spend_id, s) for s in spend.scopes])
        return dataclasses.replace(spend, id=spend_id)

    def spent(self, scope: str, *, accountant: str = "prv") -> Spent:
        """What ``scope``'s worst-off patient has spent, composed and summed; see :class:`Spent`."""
        one_of(ACCOUNTANTS, accountant=accountant)
        return self._spent(parse_scope(scope), *self._read(), accountant)

    def history(self, scope: str | None = None) -> list[Spend]:
        """Every spend in time order; with ``scope``, those that touched some of its records."""
        spends = self._read()[1]
        return spends if scope is None else _touching(spends, parse_scope(scope))

    def budgets(self) -> list[Budget]:
        """Every budget ever set, in time order (a scope's current one is its last)."""
        with self._transaction(write=False) as db:
            rows = db.execute("SELECT scope, epsilon, delta, time, actor FROM budgets ORDER BY id")
            return [Budget(*row) for row in rows]

    def show(self, scope: str | None = None, *, accountant: str = "prv") -> pd.DataFrame:
        """One row per scope with a budget or spends (those inside ``scope`` if given), widest first.

        Columns: scope, budget_epsilon, budget_delta (NaN: no budget), spent_epsilon_composed at spent_delta,
        spent_epsilon_sum at spent_delta_sum, remaining (NaN: no budget), n_spends.
        """
        one_of(ACCOUNTANTS, accountant=accountant)
        budgets, spends = self._read()
        known = {parse_scope(s) for s in budgets} | {parse_scope(x) for s in spends for x in s.scopes}
        if scope is not None:
            within = parse_scope(scope)
            known = {k for k in known if within.contains(k)} | {within}
        rows = [self._spent(k, budgets, spends, accountant) for k in sorted(known, key=Scope._key)]
        nan = lambda x: math.nan if x is None else x  # noqa: E731
        return pd.DataFrame({
            "scope": [s.scope for s in rows],
            "budget_epsilon": [nan(s.budget and s.budget.epsilon) for s in rows],
            "budget_delta": [nan(s.budget and s.budget.delta) for s in rows],
            "spent_epsilon_composed": [s.epsilon for s in rows],
            "spent_delta": [nan(s.delta) for s in rows],
            "spent_epsilon_sum": [s.epsilon_sum for s in rows],
            "spent_delta_sum": [s.delta_sum for s in rows],
            "remaining": [nan(s.remaining) for s in rows],
            "n_spends": [s.n_spends for s in rows],
        })  # fmt: skip
