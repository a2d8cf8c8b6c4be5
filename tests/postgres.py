"""A throwaway PostgreSQL server for the tests: ``initdb`` in a temporary folder, ``pg_ctl`` on a free port
of 127.0.0.1, stopped by its data folder at the end. The server refuses to run as root, so under root it runs
as the unprivileged ``postgres`` user (Debian's package creates it), else ``nobody``."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

ADMIN = "privkit_admin"  # the superuser initdb creates


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` (Debian), else the folder of ``initdb`` on PATH."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running server: its superuser's password, port, data folder, and who runs it."""

    bindir: Path
    folder: Path
    port: int
    password: str
    user: str | None  # run as this user (under root), else as ourselves

    def url(
        self, user: str = ADMIN, password: str | None = None, database: str = "postgres"
    ) -> str:
        secret = urllib.parse.quote(self.password if user == ADMIN else password or "", safe="")
        return f"postgresql://{user}:{secret}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    @classmethod
    def start(cls, bindir: Path) -> Server:
        user = None
        if os.geteuid() == 0:
            user = next((u for u in ("postgres", "nobody") if _user_exists(u)), None)
            if user is None:
                raise RuntimeError(
                    "running as root, and neither a 'postgres' nor a 'nobody' user exists"
                )
        folder = Path(tempfile.mkdtemp(prefix="privkit-pg-"))
        server = cls(bindir, folder, _free_port(), os.urandom(12).hex(), user)
        (folder / "pw").write_text(server.password + "\n")
        if user:
            entry = pwd.getpwnam(user)
            for path in (folder, folder / "pw"):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        done = server._run(
            "initdb",
            "-D",
            str(folder / "data"),
            "-U",
            ADMIN,
            f"--pwfile={folder / 'pw'}",
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        if done.returncode != 0:
            server.remove()
            raise RuntimeError(f"initdb failed: {done.stderr.strip()}")
        # fsync off: a test server's data need not survive a power cut (the clients are what tests kill)
        options = (
            f"-c listen_addresses=127.0.0.1 -p {server.port} -c unix_socket_directories={folder} "
            "-c fsync=off -c full_page_writes=off -c synchronous_commit=off -c max_connections=80"
        )
        log = folder / "log"
        done = server._run(
            "pg_ctl", "-D", str(folder / "data"), "-l", str(log), "-o", options, "-w", "start"
        )
        if done.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            server.remove()
            raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()} {tail}")
        return server

    def stop(self) -> None:
        """Stop this server (``pg_ctl stop`` on its data folder: its own postmaster pid) and remove it."""
        try:
            self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")
        finally:
            self.remove()

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


RESEARCHERS = {"alice": "pneumoniamnist", "bob": "chestmnist"}  # each granted one dataset
USERS = {
    "steward": ("privkit_steward",),
    "tester": ("privkit_steward", "privkit_researcher"),
    "alice": ("privkit_researcher",),
    "bob": ("privkit_researcher",),
}
_ADMIN_URLS: dict[
    str, str
] = {}  # a ledger's location (the URL without password) -> its superuser's URL


class Cluster:
    """A server with privkit's roles, the users above, and a template database where ``privkit budget init``
    ran and the steward granted each researcher their dataset; each test copies the template."""

    def __init__(self, server: Server):
        import psycopg

        from privkit import budget

        self.server, self.passwords, self._n = server, {u: os.urandom(8).hex() for u in USERS}, 0
        with psycopg.connect(server.url(), autocommit=True) as db:
            db.execute("CREATE DATABASE privkit_template")
        budget.init(server.url(database="privkit_template"))
        with psycopg.connect(server.url(), autocommit=True) as db:
            for user, roles in USERS.items():
                password = self.passwords[user]
                db.execute(
                    f"CREATE ROLE {user} LOGIN PASSWORD '{password}' IN ROLE {', '.join(roles)}"
                )
        steward = budget.Ledger(self.url("steward", "privkit_template"))
        for user, dataset in RESEARCHERS.items():
            steward.grant(dataset, user)

    def url(self, user: str, database: str) -> str:
        return self.server.url(user, self.passwords.get(user), database)

    def new_database(self) -> str:
        """A fresh copy of the template: its name."""
        import psycopg

        self._n += 1
        name = f"ledger_{self._n}"
        with psycopg.connect(self.server.url(), autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name} TEMPLATE privkit_template STRATEGY FILE_COPY")
        for user in USERS:
            _ADMIN_URLS[_location(self.url(user, name))] = self.server.url(database=name)
        return name


def _location(url: str) -> str:
    from privkit._ledger_postgres import redact

    return redact(url)


def admin_rows(location: str, sql: str, params: tuple = ()) -> list[tuple]:
    """``sql``'s rows as the superuser, in the database of the ledger at ``location``: every row, as
    stored."""
    import psycopg

    with psycopg.connect(_ADMIN_URLS[location], autocommit=True) as db:
        cursor = db.execute(sql, params or None)
        return cursor.fetchall() if cursor.description else []
