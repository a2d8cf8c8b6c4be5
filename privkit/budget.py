"""Privacy budgets: a ledger that refuses a training run once a scope's budget is spent.

A budget ``(epsilon, delta)`` belongs to a *scope*, a set of records: ``dataset:<name>``, an institution in it
(``dataset:<name>/institution:<id>``), a patient group at every institution (``dataset:<name>/group:<id>``) or
at one (``dataset:<name>/institution:<id>/group:<id>``). Each record belongs to one institution and one group.

**Scopes are canonical.** A scope names a dataset privkit knows (:data:`privkit.data.DATASETS`) or one
registered in the ledger with its size (:meth:`Ledger.register_dataset`). Any other name is refused, a case or
spelling variant with the canonical scope it resembles: a spend on ``dataset:PneumoniaMNIST`` would never meet
the budget of ``dataset:pneumoniamnist``. Institution and group ids are free, but one that differs only in
case from an id already in the ledger is refused too. Build scope strings with :class:`Scope`:
``str(Scope("pneumoniamnist", institution="h1"))``.

**What is checked.** A patient's privacy loss is the composition of every spend on a scope containing them,
and a budget bounds the loss of each patient in its scope. Before a run reads any data, :meth:`Ledger.charge`
takes the mechanism it is about to run and checks, for every kind of patient it touches (each institution and
group the ledger knows, and "any other"), every budget on a scope containing that patient. One budget exceeded
and the run is refused with :class:`BudgetExceededError`, and nothing is recorded. So a spend on the dataset
counts against every institution's budget, and one on a group against each institution's; spends on two
institutions (or two groups) never meet in one patient and do not add up (parallel composition). A scope with
no budget on it or above it has no limit: its spends are recorded, and ``show`` says "no budget". A run
without noise has infinite epsilon and is refused by any budget.

**Epsilon and delta.** The spent epsilon composes the mechanisms (noise multiplier, sample rate, steps) of all
spends with the accountant (:func:`privkit.accounting.compose`) at the budget's delta: this is what a budget
is checked against. The sum of the runs' own epsilons, each at the run's own delta, is reported too, with the
sum of those deltas: basic composition, always valid, looser. A scope without a budget reports the composed
epsilon at the smallest delta of a budget containing it, else at the smallest delta of its runs. With
``"prv"`` (the default), spends of more than ``PRV_MAX_MECHANISMS`` different (noise, sample rate) pairs, or
epsilons too large for PRV, are composed with RDP instead: a valid bound too, a little looser, and fast.

**Raising a budget** is an explicit, recorded event: :meth:`Ledger.set_budget` refuses to raise the epsilon or
the delta of a scope's current budget unless called with ``raise_budget=True`` and a reason, which is kept
with the budget. Setting a first budget, or lowering one, needs neither. No budget goes below what was spent.

**Seeded runs.** A charge says where the run's noise and Poisson draws come from: ``randomness="secure"``, the
operating system's entropy, or ``"seeded:<hex id>"``, a stream derived from a recorded seed (the id names the
stream). Whoever knows that seed can replay a seeded run and tell whether a record was in it, so its guarantee
does not hold against them: a seeded run is refused (:class:`SeededRunError`) unless the caller passes
``allow_seeded=True``, for public benchmark data only, and is then recorded as seeded. A stream already spent
on an overlapping scope is refused even so: runs that share their noise are not independent mechanisms and do
not compose as such.

**No refunds.** The charge is committed before the data are read, and a run that crashes later is not
refunded: it has touched the data, and what it computed (a partial model, logs, timings) may already have left
the process. Refunds would let a run that crashes, is killed, or crashes on purpose, look at the data for
free, as often as it likes.

**Where it lives.** An SQLite file by default (one researcher, one machine; :mod:`privkit._ledger_sqlite`), or
a PostgreSQL database that a lab or hospital shares (:mod:`privkit._ledger_postgres`), chosen by the location:
``Ledger("ledger.sqlite")`` or ``sqlite:///path``, ``Ledger("postgresql://alice@dbhost/privacy")``, else
``$PRIVKIT_LEDGER``. Same events, same API, same refusals; in PostgreSQL the database enforces the roles: a
steward sets budgets, registers and grants datasets, a researcher charges and reads the datasets granted to
them, nobody changes a row, and the actor recorded is the database user. :func:`init` creates either, and
:func:`migrate` moves a ledger from one to the other with its chain.

**Hard to fool.** The ledger is append-only (SQLite triggers; in PostgreSQL privileges and triggers), and its
events (budgets, registrations, spends) form a hash chain: a rewrite, insertion, deletion or reordering of
rows outside this API is found by :meth:`Ledger.verify`, and every write verifies first and refuses a ledger
that does not (:class:`LedgerTamperedError`). A rewrite of the whole chain, every hash recomputed, is caught
by an *anchor*: a head recorded outside the ledger, such as the ``hash`` of the :class:`Spend` that
:meth:`Ledger.charge` returns, kept in the run's provenance.

**Concurrency.** Each check-and-charge is one transaction: ``BEGIN IMMEDIATE`` in SQLite, SERIALIZABLE in
PostgreSQL, where the database also checks that the charge composed the spends it finds under its lock (else
the charge reads the ledger again and retries). Of processes racing for the last of a budget, each sees the
spends of those that came first.

Errors: :class:`LedgerError` (a ``RuntimeError``: not a ledger, read-only, locked, unreachable, refused by the
database, a dataset not granted) and its subclasses :class:`BudgetExceededError`, :class:`LedgerTamperedError`
and :class:`SeededRunError` (not ``OSError``, so handlers of file errors do not swallow a refusal); bad
arguments, unknown scopes and unflagged raises raise ``ValueError``.

>>> import pathlib, tempfile
>>> ledger = Ledger(pathlib.Path(tempfile.mkdtemp()) / "ledger.sqlite")
>>> _ = ledger.set_budget("dataset:pneumoniamnist", epsilon=5.0, delta=1e-5)
>>> from privkit.mechanism import plan
>>> run = plan(noise_multiplier=1.0, sample_rate=256 / 4708, steps=100, delta=1e-5)
>>> spend = ledger.charge([Scope("pneumoniamnist", institution="h1")], run, run_id="a", actor="me")
>>> round(spend.epsilon, 2), round(ledger.spent("dataset:pneumoniamnist").remaining, 2)
(3.82, 1.18)
>>> ledger.charge([Scope("pneumoniamnist")], run, run_id="b", actor="me")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
privkit.budget.BudgetExceededError: Privacy budget of dataset:pneumoniamnist exceeded: ...
>>> ledger.verify().head == spend.hash, ledger.verify().events
(True, 2)
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from privkit import _hashchain, _ledger_postgres, accounting, data
from privkit._ledger_sqlite import (
    APPLICATION_ID,
    BUSY_TIMEOUT_S,
    SCHEMA_VERSION,
    UNRECORDED,
    Budget,
    Check,
    Event,
    LedgerError,
    LedgerFile,
    LedgerTamperedError,
    Registration,
    Spend,
    State,
    Verified,
    default_actor,
    default_path,
    now,
)
from privkit._validate import in_range, one_of, positive_int
from privkit.mechanism import Mechanism

__all__ = [
    "ACCOUNTANTS",
    "APPLICATION_ID",
    "BUSY_TIMEOUT_S",
    "PRV_MAX_MECHANISMS",
    "RANDOMNESS_FORMS",
    "SCHEMA_VERSION",
    "SCOPE_FORMS",
    "UNRECORDED",
    "Budget",
    "BudgetExceededError",
    "Event",
    "Ledger",
    "LedgerError",
    "LedgerTamperedError",
    "Registration",
    "Scope",
    "SeededRunError",
    "Spend",
    "Spent",
    "Verified",
    "default_actor",
    "default_path",
    "init",
    "migrate",
    "parse_scope",
]
ACCOUNTANTS = ("prv", "rdp")  # upper bounds only; "gdp" can under-report
# beyond, PRV gets slow (20 different runs: ~30 s), and "prv" composes with RDP
PRV_MAX_MECHANISMS = 8
SCOPE_FORMS = (
    "dataset:<name>",
    "dataset:<name>/institution:<id>",
    "dataset:<name>/group:<id>",
    "dataset:<name>/institution:<id>/group:<id>",
)
RANDOMNESS_FORMS = ("secure", "seeded:<hex id>")
_NAME = r"[A-Za-z0-9_.-]+"
_SCOPE = re.compile(rf"dataset:({_NAME})(?:/institution:({_NAME}))?(?:/group:({_NAME}))?")
_DATASET_NAME = re.compile(r"[a-z0-9_.-]+")  # a registered dataset: canonical, in lower case
_RANDOMNESS = re.compile(r"secure|seeded:[0-9a-f]+")
_OTHER = ""  # in a patient cell: an institution or a group the ledger has never seen


class BudgetExceededError(LedgerError):
    """A charge refused, as it would exceed ``budget``; nothing was charged.

    Attributes ``budget``, ``spent``, ``requested`` (the run alone), ``composed`` (spent and run),
    ``remaining``.
    """

    @classmethod
    def of(
        cls, budget: Budget, *, spent: float, requested: float, composed: float, run_id: str
    ) -> BudgetExceededError:
        remaining = max(0.0, budget.epsilon - spent)
        error = cls(
            f"Privacy budget of {budget.scope} exceeded: budget epsilon={budget.epsilon:g} "
            f"(delta={budget.delta:g}), spent {spent:.4g}, requested {requested:.4g} "
            f"(this run alone; {composed:.4g} composed with the spent), "
            f"remaining {remaining:.4g}. Run {run_id!r} refused; nothing was charged."
        )  # attributes set here, not in __init__, so that it pickles (across processes)
        error.budget, error.spent, error.requested, error.composed, error.remaining = (
            budget,
            spent,
            requested,
            composed,
            remaining,
        )
        return error


class SeededRunError(LedgerError):
    """A charge refused for its randomness: seeded without ``allow_seeded``, or a noise stream reused."""


@dataclass(frozen=True)
class Scope:
    """A set of records: a dataset, optionally narrowed to an institution and/or a patient group.

    Its ``str`` is the scope's text; names are letters, digits, ``_``, ``.``, ``-``.

    >>> str(Scope("pneumoniamnist", institution="h1"))
    'dataset:pneumoniamnist/institution:h1'
    >>> Scope("pneumoniamnist", institution="h1/group:kids")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Expected institution='h1/group:kids' to be a name of letters, digits, '_', '.', '-'.
    """

    dataset: str
    institution: str | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        for kind in ("dataset", "institution", "group"):
            name = getattr(self, kind)
            private_other = (
                kind != "dataset" and name == _OTHER
            )  # a patient cell's "any other" (see _cells)
            if not (
                kind != "dataset"
                and name is None
                or private_other
                or isinstance(name, str)
                and re.fullmatch(_NAME, name)
            ):
                raise ValueError(
                    f"Expected {kind}={name!r} to be a name of letters, digits, '_', '.', '-'."
                )

    def __str__(self) -> str:
        parts = [
            ("dataset", self.dataset),
            ("institution", self.institution),
            ("group", self.group),
        ]
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
        return (
            self.dataset == other.dataset
            and self.institution in (None, other.institution)
            and self.group in (None, other.group)
        )

    def overlaps(self, other: Scope) -> bool:
        """Whether some record can be in both scopes."""
        pairs = ((self.institution, other.institution), (self.group, other.group))
        return self.dataset == other.dataset and all(None in (a, b) or a == b for a, b in pairs)

    def _key(self) -> tuple[str, str, str]:  # widest first
        return self.dataset, self.institution or "", self.group or ""


def parse_scope(text: Scope | str) -> Scope:
    """Parse ``dataset:<name>[/institution:<id>][/group:<id>]`` (names ``[A-Za-z0-9_.-]+``); a
    :class:`Scope` is checked by its text, so every ledger method takes either.

    Only the form is checked here; a ledger also checks that the dataset is one it knows.

    >>> parse_scope("dataset:pneumoniamnist/institution:h1").parent
    Scope(dataset='pneumoniamnist', institution=None, group=None)
    >>> parse_scope("hospital:h1")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Unknown scope='hospital:h1'; expected one of: dataset:<name>, ...
    """
    scope = _parse(str(text)) if isinstance(text, (str, Scope)) else None
    if scope is None:
        raise ValueError(
            f"Unknown scope={text!r}; expected one of: {', '.join(SCOPE_FORMS)} "
            "(names of letters, digits, '_', '.', '-')."
        )
    return scope


@functools.lru_cache(maxsize=4096)  # the scopes of stored spends are parsed again at every check
def _parse(text: str) -> Scope | None:
    match = _SCOPE.fullmatch(text)
    return Scope(*match.groups()) if match else None


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


def _text(**kwargs: str | None) -> str | None:
    """None, or a non-empty string (else a ValueError naming it)."""
    [(name, value)] = kwargs.items()
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError(f"Expected {name}={value!r} to be a non-empty string.")
    return value


@functools.lru_cache(maxsize=4096)
def _composed(
    mechanisms: tuple[tuple[float, float, int], ...], delta: float, accountant: str
) -> float:
    if len({(s, q) for s, q, n in mechanisms if n}) > PRV_MAX_MECHANISMS:
        accountant = "rdp"  # the PRV of many different runs is slow
    return accounting.upper_bound(mechanisms, delta=delta, accountant=accountant)[0]


def _epsilon(spends: Iterable[Spend], delta: float, accountant: str, extra: tuple = ()) -> float:
    mechanisms = [(s.noise_multiplier, s.sample_rate, s.steps) for s in spends] + list(extra)
    return _composed(tuple(sorted(mechanisms)), delta, accountant)


def _cells(scope: Scope, known: Iterable[Scope]) -> list[Scope]:
    """The kinds of patient in ``scope``: each known (institution, group), or "other"."""
    same = [k for k in known if k.dataset == scope.dataset]
    ids = [
        [mine] if mine is not None else sorted({getattr(k, f) for k in same} - {None}) + [_OTHER]
        for mine, f in ((scope.institution, "institution"), (scope.group, "group"))
    ]
    return [Scope(scope.dataset, i, g) for i in ids[0] for g in ids[1]]


def _touching(spends: Iterable[Spend], scope: Scope) -> list[Spend]:
    return [s for s in spends if any(parse_scope(x).overlaps(scope) for x in s.scopes)]


def _canonical(text: Scope | str, state: State) -> Scope:
    """``text`` parsed, if it names a dataset the ledger knows and no case variant of an id in it."""
    scope = parse_scope(text)
    known = (*data.DATASETS, *(d.name for d in state.datasets))
    if scope.dataset not in known:
        folded = {k.casefold(): k for k in known}
        guess = folded.get(scope.dataset.casefold()) or next(
            iter(difflib.get_close_matches(scope.dataset.casefold(), known, n=1)), None
        )
        hint = f"; did you mean '{dataclasses.replace(scope, dataset=guess)}'?" if guess else "."
        hidden = " (or one registered but not granted to you)" if state.visible is not None else ""
        raise ValueError(
            f"Unknown dataset {scope.dataset!r} in scope {str(text)!r}{hint} A scope names a "
            "dataset privkit knows or one registered in this ledger with its size "
            f"({', '.join(known)}){hidden}; register another with Ledger.register_dataset "
            "(privkit budget register --dataset NAME --size N)."
        )
    if state.visible is not None and scope.dataset not in state.visible:
        raise LedgerError(
            f"The dataset {scope.dataset!r} is not granted to {state.reader} on this ledger: "
            "you may neither see nor charge it. Its steward grants it (privkit budget grant)."
        )
    stored = [b.scope for b in state.budgets] + [x for s in state.spends for x in s.scopes]
    seen = [parse_scope(x) for x in stored]
    for kind in ("institution", "group"):
        name = getattr(scope, kind)
        ids = {getattr(s, kind) for s in seen if s.dataset == scope.dataset} - {None, name}
        variants = sorted(i for i in ids if name is not None and i.casefold() == name.casefold())
        if variants:
            fixed = dataclasses.replace(scope, **{kind: variants[0]})
            raise ValueError(
                f"Unknown {kind} {name!r} in scope {text!r}; did you mean '{fixed}'? Ids that "
                "differ only in case would be two budgets for the same patients."
            )
    return scope


def _check_randomness(randomness: str, allow_seeded: bool, run_id: str) -> None:
    if not isinstance(randomness, str) or not _RANDOMNESS.fullmatch(randomness):
        raise ValueError(
            f"Expected randomness={randomness!r} to be one of: {', '.join(RANDOMNESS_FORMS)} "
            "(the id in lower-case hex)."
        )
    if not isinstance(allow_seeded, bool):
        raise ValueError(f"Expected allow_seeded={allow_seeded!r} to be True or False.")
    if randomness != "secure" and not allow_seeded:
        raise SeededRunError(
            f"Run {run_id!r} is seeded (randomness={randomness!r}): its noise and "
            "sampling follow from a recorded seed, and whoever knows the seed can replay "
            "it, so its guarantee does not hold against them. Pass allow_seeded=True "
            "(privkit budget charge --allow-seeded) only for public benchmark data; nothing "
            "was charged."
        )


def _or_default(location: str | Path | None) -> str | Path | None:
    """``location``, else ``$PRIVKIT_LEDGER``; None then means :func:`default_path`."""
    return (os.environ.get("PRIVKIT_LEDGER") or None) if location is None else location


def _store(
    location: str | Path | None, read_only: bool
) -> LedgerFile | _ledger_postgres.LedgerDatabase:
    """The storage ``location`` names: a PostgreSQL URL, else a file (``sqlite:///path`` or a path)."""
    location = _or_default(location)
    if _ledger_postgres.is_url(location):
        return _ledger_postgres.LedgerDatabase(location, read_only=read_only)
    if isinstance(location, str) and location.startswith("sqlite:///"):
        location = location[
            len("sqlite:///") :
        ]  # sqlite:///relative/path, sqlite:////absolute/path
    return LedgerFile(location, read_only=read_only)


class Ledger:
    """A privacy-budget ledger: an SQLite file (:mod:`privkit._ledger_sqlite`) or a PostgreSQL database
    (:mod:`privkit._ledger_postgres`); see the module's docstring.

    Args:
        location: The ledger file (created with its folders if missing), ``sqlite:///path``, or
            ``postgresql://user@host/database`` (a database where ``privkit budget init`` ran); default
            ``$PRIVKIT_LEDGER``, else :func:`default_path`.
        read_only: Open it for reading only: writes raise; never creates or migrates a file.

    Raises:
        LedgerError: If it is not a privkit ledger, cannot be created or reached, or (a schema version 1 file)
            cannot be migrated.
    """

    def __init__(self, location: str | Path | None = None, *, read_only: bool = False):
        self._store = _store(location, read_only)
        self.read_only = read_only
        self.location: str = self._store.location  # the path, or the URL without its password
        self.path: Path | None = self._store.path  # None in PostgreSQL

    def __repr__(self) -> str:
        return f"Ledger({self.location!r}{', read_only=True' if self.read_only else ''})"

    def _read(self) -> State:
        return self._store.read()

    def register_dataset(
        self, name: str, *, size: int, actor: str | None = None, description: str | None = None
    ) -> Registration:
        """Register a dataset privkit does not know, so that scopes ``dataset:<name>...`` can be charged.

        Args:
            name: Its canonical name, in lower case (letters, digits, ``_``, ``.``, ``-``).
            size: Its number of records, >= 1.
            actor: Who registers it (default: user@host).
            description: What it is, kept with the registration.

        Raises:
            ValueError: If the name is malformed, known to privkit, or already registered (never changed).
            LedgerError: If the ledger is read-only or does not verify.
        """
        if not isinstance(name, str) or not _DATASET_NAME.fullmatch(name):
            lower = isinstance(name, str) and name.lower() != name
            raise ValueError(
                f"Expected name={name!r} in lower case, of letters, digits, '_', '.', '-'"
                + (f" (canonical: {name.lower()!r})." if lower else ".")
            )
        positive_int(size=size)
        _text(actor=actor)
        _text(description=description)

        def decide(state: State) -> tuple[Registration, list[Check]]:
            if name in data.DATASETS:
                raise ValueError(
                    f"The dataset {name!r} is known to privkit: dataset:{name} needs no "
                    "registration."
                )
            for old in state.datasets:
                if old.name == name:
                    raise ValueError(
                        f"The dataset {name!r} was registered with size {old.size} at "
                        f"{old.time} by {old.actor}; a registration is never "
                        "changed."
                    )
            return Registration(
                name, size, now(), actor or default_actor(), description, 0, 0, "", ""
            ), []

        return self._store.write(decide)

    @staticmethod
    def _spent(
        scope: Scope,
        budgets: dict[str, Budget],
        spends: list[Spend],
        accountant: str,
        delta: float | None = None,
    ) -> Spent:
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
        return Spent(
            str(scope),
            epsilon,
            delta,
            *sums,
            len(mine),
            own,
            own.epsilon - epsilon if own else None,
        )

    def set_budget(
        self,
        scope: Scope | str,
        *,
        epsilon: float,
        delta: float,
        actor: str | None = None,
        accountant: str = "prv",
        raise_budget: bool = False,
        reason: str | None = None,
    ) -> Budget:
        """Set, lower or (explicitly) raise the budget of ``scope``; every change stays in the ledger.

        Args:
            scope: A canonical scope (see the module's docstring).
            epsilon, delta: The budget, epsilon in (0, inf) and delta in (0, 1).
            actor: Who sets it (default: user@host).
            accountant: ``"prv"`` or ``"rdp"``: how what was spent is composed.
            raise_budget: Allow raising the epsilon or the delta of the scope's current budget; needs
                ``reason``.
            reason: Why; kept with the budget.

        Returns:
            The recorded :class:`Budget` (its ``hash``: the chain's new head).

        Raises:
            ValueError: If ``epsilon`` is not in (0, inf), ``delta`` not in (0, 1), the scope is malformed or
                unknown, it would raise the budget without ``raise_budget=True`` and a reason, or the scope
                has already spent more than ``epsilon`` (at ``delta``).
            LedgerError: If the ledger is read-only or does not verify (:class:`LedgerTamperedError`).
        """
        parse_scope(scope)
        in_range(0, math.inf, low_inclusive=False, high_inclusive=False, epsilon=epsilon)
        in_range(0, 1, low_inclusive=False, high_inclusive=False, delta=delta)
        one_of(ACCOUNTANTS, accountant=accountant)
        one_of((False, True), raise_budget=raise_budget)
        _text(actor=actor)
        _text(reason=reason)

        def decide(state: State) -> tuple[Budget, list[Check]]:
            parsed = _canonical(scope, state)
            current = state.current.get(str(parsed))
            raising = current and (epsilon > current.epsilon or delta > current.delta)
            if raising and not (raise_budget and reason):
                raise ValueError(
                    f"Refused to raise the budget of {parsed} from epsilon={current.epsilon:g}, "
                    f"delta={current.delta:g} to epsilon={epsilon:g}, delta={delta:g} without "
                    "raise_budget=True and a reason (privkit budget set --raise --reason TEXT); "
                    "nothing was changed."
                )
            spent = self._spent(parsed, state.current, state.spends, accountant, delta=delta)
            if spent.epsilon > epsilon:
                raise ValueError(
                    f"Expected epsilon={epsilon!r} >= {spent.epsilon:.4g}, what {parsed} has already "
                    f"spent at delta={delta:g} ({spent.n_spends} spends); a budget cannot go below it."
                )
            new = Budget(
                str(parsed),
                float(epsilon),
                float(delta),
                now(),
                actor or default_actor(),
                reason,
                0,
                0,
                "",
                "",
            )
            return new, []

        return self._store.write(decide)

    def charge(
        self,
        scopes: Sequence[Scope | str],
        mechanism: Mechanism,
        *,
        run_id: str,
        actor: str,
        randomness: str = "secure",
        allow_seeded: bool = False,
    ) -> Spend:
        """Record the spend of a run about to read the records of ``scopes``, or refuse it. Call it first.

        Args:
            scopes: The canonical scopes whose records the run reads (one spend, listed on each of them):
                :class:`Scope` values, or their text.
            mechanism: What the run will execute (:func:`privkit.mechanism.plan`): its noise multiplier,
                sample rate and steps are composed; its delta is the run's own (for its epsilon alone,
                and the summed bound); its accountant (``"prv"`` or ``"rdp"``) gives the run's epsilon
                and the composition checked. Its recorded ``epsilon`` is not trusted: the ledger
                computes its own.
            run_id, actor: What runs, and who or what runs it (a user, a service, a host).
            randomness: ``"secure"`` (noise and Poisson draws from the operating system's entropy) or
                ``"seeded:<hex id>"`` (a stream derived from a recorded seed and the run's identity; the id
                names the stream).
            allow_seeded: Accept a seeded run, for public benchmark data only; it is recorded as seeded.

        Returns:
            The recorded :class:`Spend`; its ``hash`` is the chain's new head: record it with the run (an
            anchor, see :meth:`verify`).

        Raises:
            BudgetExceededError: If a budget would be exceeded; nothing is recorded then.
            SeededRunError: If the run is seeded without ``allow_seeded``, or its stream was already spent on
                an overlapping scope; nothing is recorded.
            ValueError: On malformed or unknown scopes, or bad mechanism values.
            LedgerError: If the ledger is read-only, stays locked, or does not verify
                (:class:`LedgerTamperedError`).
        """
        if isinstance(scopes, (str, Scope)) or not scopes:
            raise ValueError(f"Expected scopes={scopes!r} to be a non-empty list of scopes.")
        scopes = [str(parse_scope(s)) for s in scopes]
        if not isinstance(mechanism, Mechanism):
            raise ValueError(
                f"Expected mechanism={mechanism!r} to be a privkit.mechanism.Mechanism "
                "(privkit.mechanism.plan builds one)."
            )
        for name, value in (("run_id", run_id), ("actor", actor)):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"Expected {name}={value!r} to be a non-empty string.")
        accountant, delta = mechanism.accountant, mechanism.delta
        one_of(ACCOUNTANTS, accountant=accountant)
        _check_randomness(randomness, allow_seeded, run_id)
        own = accounting.upper_bound([mechanism.event], delta=delta, accountant=accountant)[0]
        sigma, q, steps = mechanism.event
        new = ((float(sigma), float(q), int(steps)),)

        def decide(state: State) -> tuple[Spend, list[Check]]:
            parsed = list(dict.fromkeys(_canonical(s, state) for s in scopes))
            budgets, spends = state.current, state.spends
            shared = [
                (old, x)
                for old in spends
                if randomness != "secure" and old.randomness == randomness
                for x in old.scopes
                if any(parse_scope(x).overlaps(p) for p in parsed)
            ]
            if shared:
                old, scope = shared[0]
                raise SeededRunError(
                    f"Run {run_id!r} reuses the noise stream {randomness!r} of spend "
                    f"{old.id} (run {old.run_id!r}) on {scope}: runs that share their noise "
                    "are not independent mechanisms and do not compose as such; derive a "
                    "new stream (a new run identity). Nothing was charged."
                )
            known = (
                [parse_scope(s) for s in budgets]
                + [parse_scope(x) for s in spends for x in s.scopes]
                + parsed
            )
            binding = sorted((parse_scope(b) for b in budgets), key=Scope._key)
            checks = []
            for cell in sorted({c for s in parsed for c in _cells(s, known)}, key=Scope._key):
                here = _touching(spends, cell)
                for budget in (budgets[str(b)] for b in binding if b.contains(cell)):
                    composed = _epsilon(here, budget.delta, accountant, new)
                    if composed > budget.epsilon:
                        raise BudgetExceededError.of(
                            budget,
                            spent=_epsilon(here, budget.delta, accountant),
                            requested=_epsilon([], budget.delta, accountant, new),
                            composed=composed,
                            run_id=run_id,
                        )
                    ids = tuple(sorted(s.id for s in here))
                    checks.append(Check(0, budget.id, cell.institution, cell.group, ids, composed))
            spend = Spend(
                0,
                now(),
                tuple(map(str, parsed)),
                *new[0],
                float(delta),
                accountant,
                float(own),
                run_id,
                actor,
                randomness,
                0,
                "",
                "",
            )
            return spend, checks

        return self._store.write(decide)

    def spent(self, scope: Scope | str, *, accountant: str = "prv") -> Spent:
        """What ``scope``'s worst-off patient has spent, composed and summed; see :class:`Spent`."""
        one_of(ACCOUNTANTS, accountant=accountant)
        state = self._read()
        return self._spent(_canonical(scope, state), state.current, state.spends, accountant)

    def history(self, scope: Scope | str | None = None) -> list[Spend]:
        """Every spend in time order; with ``scope``, those that touched some of its records."""
        state = self._read()
        return state.spends if scope is None else _touching(state.spends, _canonical(scope, state))

    def events(self, scope: Scope | str | None = None) -> list[Event]:
        """Every event in chain order: budgets, dataset registrations and spends; with ``scope``, the budgets
        and spends on scopes overlapping it and the registration of its dataset."""
        state = self._read()
        if scope is None:
            return state.events
        within = _canonical(scope, state)
        return [
            e
            for e in state.events
            if isinstance(e, Registration)
            and e.name == within.dataset
            or isinstance(e, Budget)
            and parse_scope(e.scope).overlaps(within)
            or isinstance(e, Spend)
            and _touching([e], within)
        ]

    def budgets(self) -> list[Budget]:
        """Every budget ever set, in time order (a scope's current one is its last)."""
        return self._read().budgets

    def verify(self, *, head: str | None = None) -> Verified:
        """Check the hash chain of every event, and that the ledger's guards are in place.

        Without an anchor, this finds any change made outside privkit short of a rewrite of the whole chain
        (every hash recomputed) or a deletion of the last events with their counters: an unkeyed chain can be
        recomputed by whoever rewrites it. With ``head``, a head recorded earlier outside the ledger (in a
        run's provenance, printed by ``privkit budget verify``, kept by a data steward), it also checks that
        this head is still on the chain, which catches those too for every event up to it.

        In PostgreSQL the database checks the whole chain, and privkit the events this user may see (a
        steward: all of them); it also recomputes, with privkit's accountant, the composed epsilon each
        charge claimed against each budget (those whose budget and spends this user sees), and refuses a
        ledger where a client under-reported one beyond its budget (see :mod:`privkit._ledger_postgres` on
        what the database trusts the client for).

        Returns:
            The :class:`Verified` head and number of events (and the anchor's place).

        Raises:
            LedgerTamperedError: Naming the first bad row (or the anchor not found, or the spend over budget).
            ValueError: If ``head`` is not a SHA-256 hex digest.
            LedgerError: If the ledger is an SQLite file of schema version 1 (opened read-only), without a
                chain.
        """
        if head is not None and not (
            isinstance(head, str)
            and len(head) == 64
            and set(head.lower()) <= set("0123456789abcdef")
        ):
            raise ValueError(
                f"Expected head={head!r} to be a SHA-256 hex digest (64 characters 0-9, a-f), "
                "as printed by privkit budget verify."
            )
        verified = self._store.verify(head=head and head.lower())
        if self.path is None:  # PostgreSQL: what each charge claimed, composed again
            self._audit(self._read())
        return verified

    def _audit(self, state: State) -> None:
        """Compose again what each charge claimed it composed, where this reader sees all of it."""
        spends, budgets = {s.id: s for s in state.spends}, {b.id: b for b in state.budgets}
        for check in state.checks:
            if check.budget_id not in budgets or not set(check.spends) <= spends.keys():
                continue  # a budget or spend of a dataset not granted to them: the steward audits it
            spend, budget = spends[check.spend_id], budgets[check.budget_id]
            mechanism = ((spend.noise_multiplier, spend.sample_rate, spend.steps),)
            composed = _epsilon(
                [spends[i] for i in check.spends], budget.delta, spend.accountant, mechanism
            )
            if composed > budget.epsilon * (1 + 1e-9):
                raise LedgerTamperedError.at(
                    self.location,
                    f"it claimed epsilon {check.epsilon:.4g} composed against the budget of {budget.scope} "
                    f"(epsilon={budget.epsilon:g}, budget row {budget.id}), but privkit's accountant "
                    f"composes {composed:.4g}: {spend.actor} charged it without privkit's accountant, over "
                    "that budget",
                    spend,
                )

    def grant(self, dataset: str, role: str, *, revoke: bool = False) -> None:
        """Let the database ``role`` (a researcher, or a group of them) see and charge ``dataset``, or revoke
        it.

        PostgreSQL only, by a steward; the grant and its revocation are kept (``privkit.grants``).

        Raises:
            LedgerError: On an SQLite file (whoever may write the file may charge it), or if the database
                refuses (not a steward; unknown dataset or role).
        """
        if not isinstance(self._store, _ledger_postgres.LedgerDatabase):
            raise LedgerError(
                f"The ledger {self.location} is an SQLite file: it has no roles, whoever may "
                "write it may charge it. Grants need a PostgreSQL ledger (privkit budget init "
                "postgresql://...)."
            )
        one_of((False, True), revoke=revoke)
        self._store.grant(dataset, role, granted=not revoke)

    def datasets(self) -> list[Registration]:
        """Every registered dataset, in time order."""
        return self._read().datasets

    def show(self, scope: Scope | str | None = None, *, accountant: str = "prv") -> pd.DataFrame:
        """One row per scope with a budget or spends (those inside ``scope`` if given), widest first.

        Columns: scope, budget_epsilon, budget_delta (NaN: no budget), spent_epsilon_composed at spent_delta,
        spent_epsilon_sum at spent_delta_sum, remaining (NaN: no budget), n_spends.
        """
        one_of(ACCOUNTANTS, accountant=accountant)
        state = self._read()
        budgets, spends = state.current, state.spends
        known = {parse_scope(s) for s in budgets} | {
            parse_scope(x) for s in spends for x in s.scopes
        }
        if scope is not None:
            within = _canonical(scope, state)
            known = {k for k in known if within.contains(k)} | {within}
        rows = [self._spent(k, budgets, spends, accountant) for k in sorted(known, key=Scope._key)]
        nan = lambda x: math.nan if x is None else x  # noqa: E731
        return pd.DataFrame(
            {
                "scope": [s.scope for s in rows],
                "budget_epsilon": [nan(s.budget and s.budget.epsilon) for s in rows],
                "budget_delta": [nan(s.budget and s.budget.delta) for s in rows],
                "spent_epsilon_composed": [s.epsilon for s in rows],
                "spent_delta": [nan(s.delta) for s in rows],
                "spent_epsilon_sum": [s.epsilon_sum for s in rows],
                "spent_delta_sum": [s.delta_sum for s in rows],
                "remaining": [nan(s.remaining) for s in rows],
                "n_spends": [s.n_spends for s in rows],
            }
        )


def init(location: str | Path | None = None) -> str:
    """Create the ledger at ``location`` (as :class:`Ledger` reads it), or bring its schema up to date.

    A file is created (and a schema-version-1 file migrated) as :class:`Ledger` does. A PostgreSQL database
    gets the schema ``privkit``, its roles ``privkit_owner``, ``privkit_steward`` and ``privkit_researcher``
    and privkit's datasets (:mod:`privkit._ledger_postgres`); this needs a superuser, and is harmless to
    repeat. Returns what was done, for a person to read.
    """
    location = _or_default(location)
    if _ledger_postgres.is_url(location):
        return _ledger_postgres.create(location, builtin=data.DATASETS)
    ledger = Ledger(location)
    return f"The privkit ledger {ledger.location} (schema version {SCHEMA_VERSION}) is ready."


def migrate(source: str | Path, destination: str | Path) -> Verified:
    """Copy every event of the ledger at ``source`` into the new, empty ledger at ``destination``, as they are
    (ids, times, actors, places, hashes): an SQLite file into PostgreSQL, or back.

    The source is verified first and the destination after, against the source's head (an anchor), so the
    history and its hash chain arrive intact or not at all. In PostgreSQL the events keep their recorded
    actors (who ran them then), and the import is a steward's, once, into a ledger with no events of its own.

    Returns:
        The destination's :class:`Verified` head: the source's.

    Raises:
        LedgerError: If either ledger cannot be used, the destination has events, or the copy does not verify.
    """
    source_ledger, target = Ledger(source, read_only=True), Ledger(destination)
    head = source_ledger.verify().head
    events = source_ledger.events()
    last = events[-1].hash if events else _hashchain.GENESIS
    if _hashchain.first_break(events) is not None or last != head:
        raise LedgerError(
            f"The ledger {source_ledger.location} changed while it was read; nothing was copied."
        )
    target._store.import_events(events)
    return target.verify(head=head)
