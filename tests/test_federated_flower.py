"""The same FedAvg on Flower: a server and two hospital clients as separate processes on
127.0.0.1 train two rounds; the result matches the in-process simulation. Bounded in time:
every process is killed on failure or timeout."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr", reason="Flower is the optional extra: pip install 'privkit[flower]'")

from privkit import data  # noqa: E402
from privkit.federated.algorithms import FederatedConfig, train_federated  # noqa: E402
from privkit.federated.flower import SiteClient, initial_weights, load_weights  # noqa: E402
from privkit.federated.sites import split_sites  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120  # the whole exchange; it takes about 20 s on a quiet 2-core CPU
# Seeded research mode, so that the network run can be compared with the simulation bit for bit.
CONFIG = dict(rounds=2, batch_size=32, epsilon=4.0, delta=1e-3, accountant="rdp", server_lr=1.5, seed=3,
              randomness="seeded")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_flower_server_and_two_clients_match_the_simulation(synthetic_root: Path, tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "global.npz"
    common = ["--n-sites", "2", "--config", json.dumps(CONFIG)]
    module = [sys.executable, "-m", "privkit.federated.flower"]
    server_cmd = [*module, "server", "--port", str(port), "--out", str(out), *common]
    client_cmds = [[*module, "client", "--server", f"127.0.0.1:{port}", "--data-root", str(synthetic_root),
                    "--site-index", str(k), *common] for k in range(2)]  # fmt: skip
    logs = [open(tmp_path / f"{name}.log", "w") for name in ("server", "client0", "client1")]
    processes: list[subprocess.Popen] = []
    try:
        for cmd, log in zip([server_cmd, *client_cmds], logs):
            processes.append(subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
            if not processes[1:]:
                time.sleep(1.0)  # let the server bind first (clients retry anyway)
        deadline = time.monotonic() + TIMEOUT_S
        for p in processes:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        assert [p.returncode for p in processes] == [0, 0, 0], _tail(tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail(f"Flower run exceeded {TIMEOUT_S} s.\n{_tail(tmp_path)}")
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        for log in logs:
            log.close()

    flower = load_weights(out)
    config = FederatedConfig(**CONFIG)
    dataset = data.load("pneumoniamnist", root=synthetic_root)
    simulated = train_federated(config, split_sites(dataset.train, n_sites=2, seed=0), evaluation=dataset,
                                progress=False)  # fmt: skip
    expected = [p.detach().numpy() for p in simulated.model.parameters()]
    start = initial_weights(config)
    assert max(float(np.abs(f - s).max()) for f, s in zip(flower, start)) > 1e-2  # the model changed
    for f, e in zip(flower, expected):
        np.testing.assert_allclose(f, e, atol=1e-5, rtol=1e-4)


def _tail(folder: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(folder.glob("*.log")))


@pytest.mark.parametrize(("weighting", "count"), [("records", "size"), ("equal", 1)])
def test_a_hospital_sends_weights_and_the_agreed_count_only(synthetic_root: Path, weighting: str, count) -> None:
    # No un-noised loss or metric leaves the hospital; the record count only by agreement.
    config = FederatedConfig(rounds=1, batch_size=32, epsilon=4.0, delta=1e-3, accountant="rdp", weighting=weighting)
    site = split_sites(data.load("pneumoniamnist", root=synthetic_root).train, n_sites=2, seed=0)[0]
    client = SiteClient(site, config)
    weights, sent, metrics = client.fit(initial_weights(config), {})
    assert metrics == {}
    assert sent == (len(site) if count == "size" else count)
    assert [w.shape for w in weights] == [w.shape for w in initial_weights(config)]
    with pytest.raises(RuntimeError, match="charged for 1 rounds"):
        client.fit(weights, {})
