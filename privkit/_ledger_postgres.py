"""The privacy-budget ledger in a PostgreSQL database that a hospital shares: roles, grants and the hash chain
kept by the database itself.

:mod:`privkit.budget` decides what to charge and refuse, as for the SQLite file
(:mod:`privkit._ledger_sqlite`: the same events, tables, columns and chain); this module stores it in the
schema ``privkit`` that :func:`create` writes from ``_ledger_postgres.sql`` (``privkit budget init URL``, as a
superuser).

**Roles.** Every table and function belongs to ``privkit_owner``, a role nobody logs in as. A member of
``privkit_steward`` sets budgets, registers datasets and grants them (:func:`privkit.set_budget`,
``register_dataset``, ``grant_dataset``); a member of ``privkit_researcher`` charges (``privkit.charge``) the
datasets granted to one of their roles. Both read; nobody may INSERT, UPDATE, DELETE or TRUNCATE a table
(no privilege, and triggers that refuse it even to the owner). The functions are ``SECURITY DEFINER``: they
record ``session_user``, the login, as the actor, stamp the time and assign the event's id, place and hash
themselves. Row-level security shows a researcher only the budgets, registrations, spends and grants of the
datasets granted to them (a spend on several datasets: if one is).

**What the database guarantees**, whatever the client sends:

- every write is one SERIALIZABLE transaction (refused otherwise) that holds the row lock of the chain's head,
  and only on a chain that verifies (``privkit.verify_chain``, :mod:`privkit._hashchain` in SQL);
- a charge names only known datasets granted to its caller, and no seeded noise stream already spent on an
  overlapping scope;
- a charge satisfies every budget that binds it: the database works out, from the rows as they are under the
  lock, each budget on a scope containing some patient the charge touches and the spends that touched that
  patient (as :meth:`privkit.budget.Ledger.charge` does), and refuses the charge unless the client composed
  exactly those spends for each of them (else the ledger changed since the client read it: the client reads
  it again and retries) and claims a composed epsilon within the budget; a run without noise is refused by
  any budget. Of two charges racing for the last of a budget, one is composed with the other's spend;
- a budget is raised only with a reason; spends, budgets, registrations and grants are never changed.

**What it trusts the client for**: the accountant's arithmetic, i.e. the composed epsilon of each
(budget, patient) check, and the run's own epsilon, which the database cannot compute (PRV needs numpy and
privkit; there is no PL/Python here). It keeps every claim with its spend (``spend_checks``), so a client that
bypasses privkit and under-reports is not stopped, but found: :meth:`privkit.budget.Ledger.verify` recomputes
every claim with privkit's accountant and names the spend and its actor. A steward also relies on their own
client for "no budget below what was spent" (it needs the accountant too).

**What it does not protect against**: a superuser of the database server (or whoever controls its files) can
do anything, triggers and row-level security included; the chain finds their edits, and an anchor (a head
kept outside the database) a rewrite of the whole chain. Researchers see the number of events and the head's
hash (``verify_chain``), not other datasets' events.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import typing
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from privkit import _hashchain
from privkit._ledger_sqlite import (
    BUSY_TIMEOUT_S,
    SCHEMA_VERSION,
    Budget,
    Check,
    Event,
    LedgerError,
    LedgerTamperedError,
    Registration,
    Spend,
    State,
    Verified,
)

URL_PREFIXES = ("postgresql://", "postgres://")
ROLES = ("privkit_owner", "privkit_steward", "privkit_researcher")
CONNECT_TIMEOUT_S = 10
_SQL = Path(__file__).with_name("_ledger_postgres.sql")
_CANONICAL_HERE = "-- @canonical (the generated privkit._canonical(row) functions go here)\n"
_TABLES = (
    "meta",
    "builtin_datasets",
    "budgets",
    "datasets",
    "spends",
    "spend_scopes",
    "spend_checks",
    "grants",
)
_SECURED = (
    "budgets",
    "datasets",
    "spends",
    "spend_scopes",
    "spend_checks",
    "grants",
)  # row-level security
_TRIGGERS = {f"{t}_{guard}" for t in _TABLES for guard in ("append_only", "no_truncate")}
_TRIGGERS |= {"head_moves_on", "head_no_truncate"}
_RETRY = ("40001", "40P01")  # serialization failure, deadlock: the transaction runs again
_LOCKED, _TAMPERED, _DENIED = "55P03", "PK002", "42501"
_STORED = ("id", "time", "actor", "seq", "prev", "hash")  # what the database fills in
_IMPORT = {  # the function that imports an event, and its fields in order
    "budget": (
        "import_budget",
        "%s::bigint, %s, %s, %s::float8, %s::float8, %s, %s",
        ("id", "time", "scope", "epsilon", "delta", "actor", "reason"),
    ),
    "dataset": (
        "import_dataset",
        "%s::bigint, %s, %s, %s::bigint, %s, %s",
        ("id", "time", "name", "size", "actor", "description"),
    ),
    "spend": (
        "import_spend",
        "%s::bigint, %s, %s::text[], %s::float8, %s::float8, %s::bigint, %s::float8, "
        "%s, %s::float8, %s, %s, %s",
        (
            "id",
            "time",
            "scopes",
            "noise_multiplier",
            "sample_rate",
            "steps",
            "delta",
            "accountant",
            "epsilon",
            "run_id",
            "actor",
            "randomness",
        ),
    ),
}


def is_url(location: object) -> bool:
    """Whether ``location`` names a PostgreSQL database (``postgresql://`` or ``postgres://``)."""
    return isinstance(location, str) and location.startswith(URL_PREFIXES)


def redact(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _psycopg():
    try:
        import psycopg
    except ImportError as error:
        raise LedgerError(
            "A PostgreSQL ledger needs psycopg 3: pip install 'privkit[postgres]'."
        ) from error
    return psycopg


# -- the schema --------------------------------------------------------------------------------------------


def canonical_sql(cls: type) -> str:
    """``CREATE FUNCTION privkit._canonical(row)``: :func:`privkit._hashchain.canonical` of a row of ``cls``'s
    table, value for value as ``_hashchain._plain`` writes it (its JSON, sorted keys, ``float.hex``)."""
    text = "'[\"str\",' || privkit._json({0}) || ']'"
    sql = {
        str: text,
        str | None: f"CASE WHEN {{0}} IS NULL THEN 'null' ELSE {text} END",
        float: "'[\"float\",\"' || privkit._hex({0}) || '\"]'",
        int: "'[\"int\",\"' || ({0})::text || '\"]'",
        tuple[str, ...]: "'[\"list\",[' || coalesce((SELECT string_agg("
        + text.format("u.x")
        + ", ',' ORDER BY u.n) FROM unnest({0}) WITH ORDINALITY u(x, n)), '') || ']]'",
    }
    hints = typing.get_type_hints(cls)
    names = sorted(f.name for f in dataclasses.fields(cls) if f.name != "hash")
    values = [sql[hints[n]].format("scopes" if n == "scopes" else f"r.{n}") for n in names]
    body = " || ',' || ".join(f"'\"{n}\":' || {v}" for n, v in zip(names, values))
    extra = ", scopes text[]" if "scopes" in names else ""
    return (
        f"CREATE OR REPLACE FUNCTION privkit._canonical(r privkit.{cls.table}{extra}) RETURNS text "
        f"LANGUAGE sql IMMUTABLE RETURN '[\"{cls.kind}\",{{' || {body} || '}}]';"
    )


def create(url: str, *, builtin: Sequence[str]) -> str:
    """Create the schema ``privkit`` and its roles in the database at ``url``, or bring them up to date.

    Run as a superuser (``postgres``), once per database; running it again is harmless. Returns what it did.
    """
    psycopg = _psycopg()
    where = redact(url)
    with _connection(url, where) as db:
        try:
            with db.transaction():
                superuser, encoding, number = db.execute(
                    "SELECT rolsuper, pg_encoding_to_char(encoding), "
                    "current_setting('server_version_num')::int FROM pg_roles, pg_database "
                    "WHERE rolname = current_user AND datname = current_database()"
                ).fetchone()
                if not superuser or encoding != "UTF8" or number < 140000:
                    raise LedgerError(
                        f"privkit budget init needs a superuser on PostgreSQL >= 14 and a UTF8 database; "
                        f"{where} gives {'a' if superuser else 'no'} superuser, {encoding}, version "
                        f"{number}. Nothing was changed."
                    )
                found = db.execute("SELECT to_regclass('privkit.meta') IS NOT NULL").fetchone()[0]
                version = _version(db) if found else None
                if version is not None and version > SCHEMA_VERSION:
                    raise LedgerError(
                        f"The ledger {where} has schema version {version}; this privkit writes "
                        f"up to {SCHEMA_VERSION}. Upgrade privkit."
                    )
                tables, functions = _SQL.read_text().split(_CANONICAL_HERE)
                db.execute(tables)
                for cls in (Budget, Registration, Spend):
                    db.execute(canonical_sql(cls))
                db.execute(functions)
                db.cursor().executemany(
                    "INSERT INTO privkit.builtin_datasets VALUES (%s) ON CONFLICT DO NOTHING",
                    [(name,) for name in builtin],
                )
        except psycopg.Error as error:
            raise LedgerError(
                f"Cannot create the ledger schema in {where}: {error}. Nothing was changed."
            ) from error
    done = "Brought up to date" if found else "Created"
    return (
        f"{done} the privkit ledger (schema version {SCHEMA_VERSION}) in {where}: schema privkit, roles "
        f"{', '.join(ROLES)}."
    )


# -- connections and transactions ----------------------------------------------------------------------------


@contextlib.contextmanager
def _connection(url: str, where: str) -> Iterator:
    psycopg = _psycopg()
    try:
        db = psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S, application_name="privkit")
    except psycopg.Error as error:
        raise LedgerError(
            f"Cannot connect to the ledger {where}: {str(error).strip()}. Nothing was changed."
        ) from error
    try:
        yield db
    finally:
        db.close()


def _version(db) -> int:
    return int(
        db.execute("SELECT value FROM privkit.meta WHERE key = 'schema_version'").fetchone()[0]
    )


def _select(db, cls: type) -> list[dict]:
    names = [f.name for f in dataclasses.fields(cls) if f.name != "scopes"]
    rows = db.execute(f"SELECT {', '.join(names)} FROM privkit.{cls.table} ORDER BY id")
    return [dict(zip(names, row)) for row in rows]


def _load(db) -> State:
    """Every row this session may see (row-level security), in one snapshot."""
    scopes: dict[int, list[str]] = {}
    for spend_id, scope in db.execute(
        "SELECT spend_id, scope FROM privkit.spend_scopes ORDER BY 1, ord"
    ):
        scopes.setdefault(spend_id, []).append(scope)
    visible, reader = db.execute("SELECT privkit.visible_datasets(), session_user").fetchone()
    checks = db.execute(
        "SELECT spend_id, budget_id, institution, grp, spends, epsilon "
        "FROM privkit.spend_checks ORDER BY 1, 2, 3, 4"
    )
    return State(
        version=_version(db),
        budgets=[Budget(**row) for row in _select(db, Budget)],
        datasets=[Registration(**row) for row in _select(db, Registration)],
        spends=[
            Spend(**row, scopes=tuple(scopes.get(row["id"], ()))) for row in _select(db, Spend)
        ],
        stray_scopes=[],  # a foreign key keeps them out
        visible=None if visible is None else frozenset(visible),
        reader=reader,
        checks=[Check(*row[:4], tuple(row[4]), row[5]) for row in checks],
    )


class LedgerDatabase:
    """A ledger in a PostgreSQL database whose schema :func:`create` wrote; see the module's docstring.

    Args:
        url: ``postgresql://user[:password]@host[:port]/database`` (libpq's URL; a password is better kept in
            ``~/.pgpass`` or ``PGPASSWORD`` than in the URL).
        read_only: Refuse writes here (reading needs only the SELECT the role has anyway).

    Raises:
        LedgerError: If the database cannot be reached, or holds no privkit ledger (run
            ``privkit budget init URL`` first), or a newer schema.
    """

    path = None  # no file

    def __init__(self, url: str, *, read_only: bool = False):
        self.url, self.location, self.read_only = url, redact(url), read_only
        psycopg = _psycopg()
        with _connection(url, self.location) as db:
            try:
                found = db.execute("SELECT has_schema_privilege('privkit', 'USAGE')").fetchone()[0]
                version = _version(db) if found else None
            except psycopg.Error:  # no schema privkit
                found = False
        if not found:
            raise LedgerError(
                f"No privkit ledger at {self.location} that this database user may read: a "
                "superuser creates it with privkit budget init URL, and a steward's role "
                "(privkit_steward or privkit_researcher) reads it."
            )
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"The ledger {self.location} has schema version {version}; this privkit reads "
                f"up to {SCHEMA_VERSION}. Upgrade privkit."
            )

    def __repr__(self) -> str:
        return f"LedgerDatabase({self.location!r}{', read_only=True' if self.read_only else ''})"

    def _error(self, error: Exception, *, write: bool, committing: bool = False) -> LedgerError:
        """A database error as the LedgerError to raise."""
        psycopg = _psycopg()
        text, state, where = str(error).strip(), getattr(error, "sqlstate", None), self.location
        unchanged = " Nothing was changed." if write else ""
        if state == _LOCKED:
            return LedgerError(
                f"The ledger {where} stayed locked {BUSY_TIMEOUT_S:g} s ({text}).{unchanged}"
            )
        if state == _TAMPERED:
            return LedgerTamperedError(
                f"The ledger {where} was changed outside privkit: {text}. privkit "
                "writes nothing to a ledger that does not verify."
            )
        if isinstance(error, psycopg.OperationalError) and (
            state is None or state[:2] in ("08", "57")
        ):
            if committing:
                unchanged = (
                    " The write may or may not have been recorded (a charge counts if it was: no "
                    "refunds); privkit budget history tells."
                )
            return LedgerError(f"Lost the connection to the ledger {where} ({text}).{unchanged}")
        if state == _DENIED:
            return LedgerError(
                f"The ledger {where} refused: {text} (roles: privkit budget init; grants: "
                f"privkit budget grant).{unchanged}"
            )
        return LedgerError(f"The ledger {where} refused: {text}.{unchanged}")

    @contextlib.contextmanager
    def _transaction(self, db, *, write: bool) -> Iterator:
        levels = _psycopg().IsolationLevel
        db.isolation_level = levels.SERIALIZABLE if write else levels.REPEATABLE_READ
        db.read_only = not write
        with db.transaction():
            db.execute(f"SET LOCAL lock_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            yield

    def read(self) -> State:
        psycopg = _psycopg()
        with _connection(self.url, self.location) as db:
            try:
                with self._transaction(db, write=False):
                    return _load(db)
            except psycopg.Error as error:
                raise self._error(error, write=False) from error

    def write(self, decide: Callable[[State], tuple[Event, Sequence[Check]]]) -> Event:
        """Read the ledger, let ``decide`` make the event (or refuse), append it: one SERIALIZABLE
        transaction, run again when another write came first; returns the event as stored."""
        self._writable()
        psycopg = _psycopg()
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        with _connection(self.url, self.location) as db:
            while True:
                committing = False
                try:
                    with self._transaction(db, write=True):
                        event, checks = decide(_load(db))
                        stored = self._append(db, event, checks)
                        committing = True
                    return stored
                except psycopg.Error as error:
                    if getattr(error, "sqlstate", None) in _RETRY and time.monotonic() < deadline:
                        continue
                    raise self._error(error, write=True, committing=committing) from error

    def _writable(self) -> None:
        if self.read_only:
            raise LedgerError(
                f"Cannot write to the ledger {self.location}: opened read-only. Nothing was "
                "changed."
            )

    def _append(self, db, event: Event, checks: Sequence[Check]) -> Event:
        from psycopg.types.json import Jsonb

        returning = f"SELECT {', '.join(_STORED)} FROM privkit."
        if isinstance(event, Budget):
            row = db.execute(
                returning + "set_budget(%s, %s::float8, %s::float8, %s)",
                (event.scope, event.epsilon, event.delta, event.reason),
            )
        elif isinstance(event, Registration):
            row = db.execute(
                returning + "register_dataset(%s, %s::bigint, %s)",
                (event.name, event.size, event.description),
            )
        else:
            claims = [
                {
                    "budget": c.budget_id,
                    "institution": c.institution,
                    "group": c.group,
                    "spends": list(c.spends),
                    "epsilon": c.epsilon,
                }
                for c in checks
            ]
            row = db.execute(
                returning
                + "charge(%s::text[], %s::float8, %s::float8, %s::bigint, %s::float8, %s, "
                "%s::float8, %s, %s, %s)",
                (
                    list(event.scopes),
                    event.noise_multiplier,
                    event.sample_rate,
                    event.steps,
                    event.delta,
                    event.accountant,
                    event.epsilon,
                    event.run_id,
                    event.randomness,
                    Jsonb(claims),
                ),
            )
        stored = dataclasses.replace(event, **dict(zip(_STORED, row.fetchone())))
        ours = _hashchain.event_hash(stored)
        if ours != stored.hash:  # privkit's hash, not only the database's
            raise LedgerTamperedError.at(
                self.location,
                f"the database hashed it as {stored.hash}, privkit "
                f"as {ours}: its functions were changed",
                stored,
            )
        return stored

    def verify(self, *, head: str | None = None) -> Verified:
        """Check the chain (here, of every event this session sees; in the database, of all of them) and the
        database's guards; with ``head``, that this anchor is on the chain. See ``Ledger.verify``."""
        psycopg = _psycopg()
        with _connection(self.url, self.location) as db:
            try:
                with self._transaction(db, write=False):
                    state = _load(db)
                    verdict = db.execute(
                        "SELECT * FROM privkit.verify_chain(%s)", (head,)
                    ).fetchone()
                    guards = _guards(db)
            except psycopg.Error as error:
                raise self._error(error, write=False) from error
        events, last, anchor, table, row, seq, problem = verdict
        mine = state.events
        if state.visible is None:  # every event: checked here too, by privkit's own code
            broken = _hashchain.first_break(mine)
            if broken is not None:
                raise LedgerTamperedError.at(self.location, broken[1], mine[broken[0]])
        for event in mine:  # (else) the events this session sees: their content against their hash
            if _hashchain.event_hash(event) != event.hash:
                raise LedgerTamperedError.at(
                    self.location, "its content does not match its hash (rewritten)", event
                )
        if problem is not None:
            bad = next((e for e in mine if (e.table, e.id) == (table, row)), None)
            where = "" if bad or table is None else f"{table} row {row} (event {seq}): "
            raise LedgerTamperedError.at(self.location, where + problem, bad)
        head_here = mine[-1].hash if mine else _hashchain.GENESIS
        if state.visible is None and (events, last) != (len(mine), head_here):
            raise LedgerTamperedError.at(
                self.location,
                f"the database reports {events} events ending in "
                f"{last}, privkit reads {len(mine)}: its functions were changed",
            )
        if guards:
            raise LedgerTamperedError.at(self.location, guards)
        if head is not None and anchor is None:
            raise LedgerTamperedError.at(
                self.location,
                f"the head {head} recorded earlier is not on its "
                "chain: events up to it were rewritten, or it is another ledger",
            )
        return Verified(last, events, anchor)

    def import_events(self, events: Sequence[Event]) -> None:
        """Append ``events`` (a whole ledger's, in chain order) as they are, into this new ledger."""
        self._writable()
        psycopg = _psycopg()
        with _connection(self.url, self.location) as db:
            try:
                with self._transaction(db, write=True):
                    for event in events:
                        name, marks, fields = _IMPORT[event.kind]
                        values = [getattr(event, f) for f in (*fields, "seq", "prev", "hash")]
                        values = [list(v) if isinstance(v, tuple) else v for v in values]
                        db.execute(f"SELECT privkit.{name}({marks}, %s::bigint, %s, %s)", values)
            except psycopg.Error as error:
                raise self._error(error, write=True) from error

    def grant(self, dataset: str, role: str, *, granted: bool = True) -> None:
        """Grant (or revoke) ``role`` the right to see and charge ``dataset``; a steward's."""
        self._writable()
        psycopg = _psycopg()
        with _connection(self.url, self.location) as db:
            try:
                with self._transaction(db, write=True):
                    db.execute("SELECT privkit.grant_dataset(%s, %s, %s)", (dataset, role, granted))
            except psycopg.Error as error:
                raise self._error(error, write=True) from error


def _guards(db) -> str | None:
    """What is wrong with the database's guards (triggers, row-level security, privileges, the owner role)."""
    triggers = dict(
        db.execute(
            "SELECT tgname, tgenabled FROM pg_trigger WHERE NOT tgisinternal AND tgrelid IN "
            "(SELECT oid FROM pg_class WHERE relnamespace = 'privkit'::regnamespace)"
        ).fetchall()
    )
    missing = sorted(_TRIGGERS - set(triggers))
    if missing:
        return f"its append-only triggers {missing} were dropped"
    off = sorted(
        t for t in _TRIGGERS if triggers[t] not in ("O", "A")
    )  # O: origin (default), A: always
    if off:
        return f"its append-only triggers {off} were disabled"
    open_tables = [
        t
        for (t,) in db.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'privkit'::regnamespace "
            "AND relname = ANY (%s) AND NOT relrowsecurity ORDER BY relname",
            (list(_SECURED),),
        )
    ]
    if open_tables:
        return f"row-level security was turned off on {open_tables}"
    writable = db.execute(
        "SELECT r.rolname, c.relname FROM pg_class c, pg_roles r WHERE c.relnamespace = "
        "'privkit'::regnamespace AND c.relkind = 'r' AND r.rolname IN ('privkit_steward', "
        "'privkit_researcher') AND has_table_privilege(r.oid, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE') "
        "ORDER BY 1, 2"
    ).fetchall()
    if writable:
        return f"roles were granted writes on its tables: {writable}"
    owner = db.execute(
        "SELECT rolcanlogin, (SELECT count(*) FROM pg_auth_members WHERE roleid = r.oid) FROM pg_roles r "
        "WHERE rolname = 'privkit_owner'"
    ).fetchone()
    if owner is None or owner[0] or owner[1]:
        return "its owner role privkit_owner can be logged in as, or has members"
    return None
