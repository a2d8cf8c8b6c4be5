from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

import postgres
from synthetic import N_LABELS, write_medmnist_npz
from tutorials import browser_available


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
        pytest.skip("PostgreSQL is not installed: no /usr/lib/postgresql/*/bin/initdb, no initdb on PATH "
                    "(.ci/run installs Debian's postgresql package)")
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
