from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import postgres
import pytest
import torch
from synthetic import N_LABELS, write_medmnist_npz
from tutorials import browser_available

# The test cluster (``ray_head``) and its driver, set before anything imports Ray, which reads
# them then: on loopback (on Linux Ray resolves 127.0.0.1 to the machine's outward address unless
# this flag is 0), with a token of this session's own, no usage reports.
os.environ.update(
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
    RAY_AUTH_MODE="token",
    RAY_AUTH_TOKEN=secrets.token_hex(32),
    RAY_USAGE_STATS_ENABLED="0",
)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding synthetic ``pneumoniamnist.npz`` and ``chestmnist.npz``."""
    root = tmp_path_factory.mktemp("medmnist")
    for name, n_labels in N_LABELS.items():
        write_medmnist_npz(root / f"{name}.npz", n_labels=n_labels)
    return root


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[postgres.Cluster]:
    """One PostgreSQL server for the session (tests/postgres.py), stopped at the end."""
    pytest.importorskip("psycopg", reason="psycopg 3 is not installed (pip install -e '.[dev]')")
    bindir = postgres.find_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL is not installed: no /usr/lib/postgresql/*/bin/initdb, no initdb on PATH "
            "(.ci/run installs Debian's postgresql package)"
        )
    server = postgres.Server.start(bindir)
    try:
        yield postgres.Cluster(server)
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres_cluster: postgres.Cluster) -> Callable[[str], str]:
    """``pg_url(user)``: the URL of a new PostgreSQL ledger (this test's own database) for a user of
    ``postgres.USERS``: "tester" (steward and researcher), "steward", "alice" or "bob" (researchers)."""
    name = postgres_cluster.new_database()
    return lambda user="tester": postgres_cluster.url(user, name)


@pytest.fixture(autouse=True)
def _no_gpu_needed(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("gpu") and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """When the browser test is selected and can run, it runs every tutorial in JupyterLab;
    running them again with papermill would only repeat it."""
    if browser_available() and any(item.get_closest_marker("browser") for item in items):
        skip = pytest.mark.skip(reason="run in JupyterLab by tests/test_browser.py")
        for item in items:
            if getattr(item, "originalname", "") == "test_tutorial_runs_on_a_cpu":
                item.add_marker(skip)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_processes(sid: int) -> dict[int, str]:
    """pid -> command line of every process in session ``sid`` (what one ``start_new_session``
    child started), read from /proc: the test's own processes, nobody else's."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        fields = stat[
            stat.rindex(")") + 2 :
        ].split()  # after "pid (comm) ": state ppid pgrp session
        if entry.name.isdigit() and int(fields[3]) == sid:
            found[int(entry.name)] = cmdline.strip()
    return found


@pytest.fixture(scope="session")
def ray_head() -> Iterator[dict]:
    """A real Ray head, a separate process on 127.0.0.1 with 2 CPUs, one per test session.

    Ray's own CLI (``ray start --head --block``) in a new session, with the environment set
    above, without dashboard, autoscaler monitor or log monitor (fewer processes to start);
    stopped by its pid, then any process left in its session by pid.
    Ray's raylet gives its agents 15 s to start (ray-project/ray#65983), which a loaded 2-core
    machine can miss: a head that dies starting is started again, twice at most.
    """
    ray = pytest.importorskip("ray")
    import privkit

    repo = str(Path(privkit.__file__).resolve().parents[1])  # workers import this privkit
    path = os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))
    head_env = {**os.environ, "PYTHONPATH": path}
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's sockets live under it
    ray_cli = str(Path(sys.executable).with_name("ray"))
    head = None
    try:
        for attempt in range(3):
            port = _free_port()
            log = temp / f"head-{attempt}.log"
            command = [
                ray_cli,
                "start",
                "--head",
                "--block",
                "--node-ip-address=127.0.0.1",
                f"--port={port}",
                "--num-cpus=2",
                "--num-gpus=0",
                "--include-dashboard=false",
                "--disable-usage-stats",
                "--no-monitor",
                "--include-log-monitor=false",
                f"--temp-dir={temp}",
            ]
            head = subprocess.Popen(
                command,
                env=head_env,
                stdout=log.open("w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            while head.poll() is None and "Ray runtime started" not in log.read_text():
                time.sleep(0.2)
            if head.poll() is None:
                break
            _stop(head)
        else:
            pytest.fail(f"The Ray head did not start in 3 tries; its logs are in {temp}.")
        yield {"address": f"127.0.0.1:{port}", "pid": head.pid}
        shutil.rmtree(temp, ignore_errors=True)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if head is not None:
            _stop(head)


def _stop(head: subprocess.Popen) -> None:
    """Stop the head by its pid (it stops its raylet and GCS), then what is left in its session."""
    if head.poll() is None:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=40)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
    for pid in session_processes(head.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
