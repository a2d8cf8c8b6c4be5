"""privkit on Flower as deployed: a SuperLink and three hospital SuperNodes as separate processes
on 127.0.0.1, TLS from a fresh CA, SuperNode authentication (an unregistered key is refused),
started as a user would (``privkit flower client`` at each hospital, ``privkit flower server``
for the run) with SecAgg+ and site-level DP, two rounds; the model equals privkit's
in-process simulation, and nothing the server received reveals a hospital's update. Then Flower's
simulation runtime with five hospitals, in the clear, equal to the simulation too; there the
same attacker finds every update, so the detector can fail. Every process is stopped by its
process group and pid, within time limits; all logs are shown on failure."""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tomllib
import torch

pytest.importorskip("flwr", reason="Flower is the optional extra: pip install 'privkit[flower]'")

from flwr.app import ConfigRecord, Context, RecordDict  # noqa: E402

from privkit import budget, data  # noqa: E402
from privkit.federated import credentials, flower  # noqa: E402
from privkit.federated.algorithms import (  # noqa: E402
    FederatedConfig,
    flatten,
    plan_server,
    site_generator,
    train_federated,
)
from privkit.federated.local import local_training, plan_site  # noqa: E402
from privkit.federated.sites import Site, split_sites  # noqa: E402
from privkit.mechanism import Mechanism  # noqa: E402
from privkit.models import create_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PRIVKIT = (sys.executable, "-m", "privkit")  # the command, as installed: privkit ...
TIMEOUT_S = 300  # the whole deployment; about a minute on a quiet 2-core CPU
# Research mode (seeded), so that the network run can be compared with the simulation.
CONFIG = dict(
    rounds=2,
    batch_size=32,
    epsilon=4.0,
    delta=1e-3,
    accountant="rdp",
    server_lr=1.5,
    seed=3,
    randomness="seeded",
)
N_NETWORK, N_SIMULATED = 3, 5
# On the network: SecAgg+, and site-level DP-FedAvg at the server on top of each hospital's DP-SGD.
NETWORK = dict(
    CONFIG, secure_aggregation=True, site_level_epsilon=8.0, site_level_delta=0.1, update_clip=0.05
)
# The ledger's randomness= and allow_seeded= arrive with another branch; charge only once it has them.
LEDGER_READY = "randomness" in inspect.signature(budget.Ledger.charge).parameters


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def simulated(config: FederatedConfig, root: Path, n_sites: int) -> list[np.ndarray]:
    dataset = data.load("pneumoniamnist", root=root)
    result = train_federated(
        config,
        split_sites(dataset.train, n_sites=n_sites, seed=0),
        evaluation=dataset,
        progress=False,
    )
    return [p.detach().numpy() for p in result.model.parameters()]


def first_updates(config: FederatedConfig, sites: list[Site]) -> list[list[np.ndarray]]:
    """Each hospital's round-1 update, layer by layer, recomputed by the attacker from the public
    seeded stream (research mode makes it knowable; what matters is whether the server saw it)."""
    torch.manual_seed(config.seed)
    model = create_model(config.model)
    start = {k: v.detach() for k, v in model.named_parameters()}
    updates = []
    for site in sites:
        plan = plan_site(
            site.name,
            len(site),
            epsilon=config.epsilon,
            delta=config.delta,
            batch_size=config.batch_size,
            local_epochs=config.local_epochs,
            rounds=config.rounds,
            max_grad_norm=config.max_grad_norm,
            accountant=config.accountant,
        )
        new, _, _ = local_training(
            model,
            start,
            site,
            plan,
            lr=config.lr,
            momentum=config.momentum,
            generator=site_generator(config, site.name),
        )
        updates.append([(new[k] - start[k]).numpy().astype(np.float64).ravel() for k in start])
    return updates


def best_match(update: list[np.ndarray], vectors: list[np.ndarray]) -> float:
    """The attacker's detector: the largest |correlation| between a received vector and a layer
    of the update of the same size (layers of at least 100 numbers)."""
    return max(
        [
            abs(float(np.corrcoef(v, layer)[0, 1]))
            for v in vectors
            for layer in update
            if v.size == layer.size >= 100 and v.std() > 0
        ],
        default=0.0,
    )


# ----------------------------------------------------------------------------------------------
# The deployment
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Deployment:
    folder: Path
    sites: list[Site]
    weights: dict[str, np.ndarray]
    received: list[np.ndarray]
    intruder_rc: int | None
    ledgers: list[Path]
    logs: str


def _family(pids: list[int]) -> set[int]:
    """``pids``, their descendants, and the helpers they started in sessions of their own, which
    outlive a parent by watching it (Flower's ``--parent-pid``); found by pid, never by name."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(proc.name))
        if b"--parent-pid" in argv[:-1]:
            watched = argv[argv.index(b"--parent-pid") + 1]
            if watched.isdigit():
                children.setdefault(int(watched), []).append(int(proc.name))
    found, todo = set(pids), list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _stop(processes: list[subprocess.Popen], started: set[int]) -> None:
    """SIGTERM to each process's group; after 10 s, SIGKILL to every process of the family."""
    for p in processes:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in processes:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for pid in _family(sorted(started)) - {os.getpid()}:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in processes:
        p.wait(timeout=10)


def _write_site(path: Path, raw: dict[str, np.ndarray], index: np.ndarray) -> None:
    """A hospital's own file in MedMNIST's format: its training records, small val/test placeholders."""
    path.parent.mkdir(parents=True)
    np.savez_compressed(
        path,
        train_images=raw["train_images"][index],
        train_labels=raw["train_labels"][index],
        **{k: raw[k][:8] for k in ("val_images", "val_labels", "test_images", "test_labels")},
    )


def _options(run: dict) -> list[str]:
    """A run configuration as ``privkit flower server`` options (``--key value``, ``--[no-]flag``)."""
    return [
        item
        for key, value in run.items()
        for item in (
            [f"--{key}" if value else f"--no-{key}"]
            if isinstance(value, bool)
            else [f"--{key}", str(value)]
        )
    ]


@pytest.fixture(scope="module")
def deployment(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    folder = tmp_path_factory.mktemp("deployment")
    # Three hospitals, each with its own file: the simulation's sites, written back in MedMNIST's format.
    with np.load(synthetic_root / "pneumoniamnist.npz") as npz:
        raw = {k: npz[k] for k in npz.files}
    n = len(raw["train_labels"])
    numbered = data.Split(torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), torch.zeros(n, 1))
    indices = [
        s.train.images.view(-1).long().numpy()
        for s in split_sites(numbered, n_sites=N_NETWORK, seed=0)
    ]
    dataset = data.load("pneumoniamnist", root=synthetic_root)
    sites = split_sites(dataset.train, n_sites=N_NETWORK, seed=0)
    for k, index in enumerate(indices):
        _write_site(folder / f"site{k + 1}" / "pneumoniamnist.npz", raw, index)
    # Credentials: the coordinator's CA and SuperLink certificate; each hospital's key, and an intruder's.
    certs = credentials.make_certificates(
        folder / "certs", hosts=["127.0.0.1", "localhost"], days=1
    )
    keys = [
        credentials.make_supernode_key(folder / "keys", name=f"site{k + 1}")
        for k in range(N_NETWORK)
    ]
    intruder, _ = credentials.make_supernode_key(folder / "keys", name="intruder")
    # The app: privkit's, with the curious coordinator's ServerApp.
    app = folder / "app"
    app.mkdir()
    text = (REPO / "apps" / "hospitals" / "pyproject.toml").read_text()
    (app / "pyproject.toml").write_text(
        text.replace("privkit.federated.flower:server_app", "flower_recorder:app")
    )
    shutil.copy(REPO / "tests" / "flower_recorder.py", app)
    coordinator = (
        {"server_ledger": str(folder / "coordinator.sqlite"), "server_allow_seeded": True}
        if LEDGER_READY
        else {}
    )
    run_options = _options(  # the whole run, as `privkit flower server` options
        flower.run_config(
            FederatedConfig(**NETWORK),
            n_sites=N_NETWORK,
            out=str(folder / "out" / "global.npz"),
            round_timeout=TIMEOUT_S,
            **coordinator,
        )
    )
    port = free_port()
    home = folder / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{certs.ca_certificate}"\n'
    )
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "PATH": os.pathsep.join([str(BIN), os.environ["PATH"]]),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    logs: dict[str, Path] = {}
    processes: list[subprocess.Popen] = []
    started: set[int] = set()  # every process of the deployment, collected while it runs
    deadline = time.monotonic() + TIMEOUT_S

    def start(name: str, *args: str) -> subprocess.Popen:
        logs[name] = folder / f"{name}.log"
        with open(logs[name], "w") as log:
            p = subprocess.Popen(
                args,
                cwd=folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        processes.append(p)
        started.update(_family([p.pid]))
        return p

    def wait(p: subprocess.Popen, what: str) -> int:
        try:
            return p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"{what} exceeded the {TIMEOUT_S} s limit.\n{tail()}")

    def tail() -> str:
        return "\n".join(
            f"--- {name}\n{path.read_text()[-4000:]}"
            for name, path in logs.items()
            if path.exists()
        )

    ledgers = [folder / f"site{k + 1}" / "ledger.sqlite" for k in range(N_NETWORK)]
    for k, path in enumerate(ledgers if LEDGER_READY else []):  # each hospital's own budget
        budget.Ledger(path).set_budget(
            f"dataset:pneumoniamnist/institution:site{k + 1}", epsilon=20.0, delta=0.1
        )
    try:
        start(
            "superlink",
            str(BIN / "flower-superlink"),
            "--ssl-ca-certfile",
            str(certs.ca_certificate),
            "--ssl-certfile",
            str(certs.superlink_certificate),
            "--ssl-keyfile",
            str(certs.superlink_key),
            "--enable-supernode-auth",
            "--port",
            str(port),
            "--disable-runtime-dependency-installation",
        )
        while "Uvicorn running" not in logs["superlink"].read_text():
            if time.monotonic() > deadline or processes[0].poll() is not None:
                pytest.fail(f"The SuperLink did not start.\n{tail()}")
            time.sleep(0.2)
        registrations = [
            start(
                f"register{k + 1}",
                str(BIN / "flwr"),
                "supernode",
                "register",
                str(public),
                "test",
                "--name",
                f"site{k + 1}",
            )
            for k, (_, public) in enumerate(keys)
        ]
        assert [wait(p, "flwr supernode register") for p in registrations] == [0] * N_NETWORK, (
            tail()
        )
        for k, (private, _) in enumerate(keys):  # each hospital: privkit flower client
            node = ["--data-root", str(folder / f"site{k + 1}"), "--site", f"site{k + 1}"]
            node += ["--require-secure-aggregation"]
            if LEDGER_READY:
                node += ["--ledger", str(ledgers[k]), "--allow-seeded"]
            start(
                f"supernode{k + 1}",
                *PRIVKIT,
                "flower",
                "client",
                "--root-certificates",
                str(certs.ca_certificate),
                "--superlink",
                f"127.0.0.1:{port}",
                "--auth-key",
                str(private),
                "--port",
                str(free_port()),
                *node,
            )
        stranger = start(
            "intruder",
            str(BIN / "flower-supernode"),
            "--root-certificates",
            str(certs.ca_certificate),
            "--superlink",
            f"127.0.0.1:{port}",
            "--auth-supernode-private-key",
            str(intruder),
            "--port",
            str(free_port()),
            "--max-retries",
            "0",
            "--node-config",
            f'data-root="{folder / "site1"}" site="intruder"',
        )
        run = start(
            "flwr-run", *PRIVKIT, "flower", "server", "test", "--app", str(app), *run_options
        )
        assert wait(run, "privkit flower server") == 0, tail()
        out = folder / "out" / "global.npz"
        for _ in range(100):  # the ServerApp writes the model as the run ends
            if out.is_file():
                break
            time.sleep(0.1)
        assert out.is_file(), f"No model at {out}.\n{tail()}"
        started.update(_family([p.pid for p in processes]))
        try:
            intruder_rc = stranger.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            intruder_rc = None
        from flower_recorder import received

        return Deployment(
            folder,
            sites,
            flower.load_weights(out),
            received(folder / "out" / "received"),
            intruder_rc,
            ledgers,
            tail(),
        )
    finally:
        _stop(processes, started)


# ----------------------------------------------------------------------------------------------
# On the network
# ----------------------------------------------------------------------------------------------


def test_the_deployment_trains_the_simulations_model(
    deployment: Deployment, synthetic_root: Path
) -> None:
    config = FederatedConfig(**NETWORK)
    expected = simulated(config, synthetic_root, N_NETWORK)
    network = list(deployment.weights.values())
    assert [w.shape for w in network] == [e.shape for e in expected]
    torch.manual_seed(config.seed)
    initial = [p.detach().numpy() for p in create_model(config.model).parameters()]
    assert (
        max(float(np.abs(w - i).max()) for w, i in zip(network, initial)) > 1e-2
    )  # the model changed
    for w, e in zip(
        network, expected
    ):  # SecAgg+ rounds each coordinate to one of 2^24 levels in [-C, C]
        np.testing.assert_allclose(w, e, atol=1e-6, rtol=0)


def test_nothing_the_server_received_reveals_a_hospitals_update(deployment: Deployment) -> None:
    updates = first_updates(
        FederatedConfig(**NETWORK), deployment.sites
    )  # before clipping: the same direction
    assert len(deployment.received) >= N_NETWORK * CONFIG["rounds"] * len(
        updates[0]
    )  # masked vectors, kept
    for site, update in zip(deployment.sites, updates):
        assert best_match(update, deployment.received) < 0.2, (
            site.name
        )  # 1.0 in the clear (the simulation test)


def test_an_unregistered_supernode_is_refused(deployment: Deployment) -> None:
    assert deployment.intruder_rc not in (None, 0), deployment.logs
    superlink = (deployment.folder / "superlink.log").read_text()
    assert superlink.count("No SuperNode found with the given public key") >= 1, deployment.logs
    assert "Receiving" not in (deployment.folder / "intruder.log").read_text()


@pytest.mark.skipif(
    not LEDGER_READY,
    reason="Ledger.charge(randomness=, allow_seeded=) arrives with the ledger branch",
)
def test_each_hospitals_ledger_and_the_coordinators_are_charged_once(
    deployment: Deployment,
) -> None:
    config = FederatedConfig(**NETWORK)
    for k, (path, site) in enumerate(zip(deployment.ledgers, deployment.sites)):
        spends = budget.Ledger(path, read_only=True).history()
        assert len(spends) == 1, (path, spends)
        plan = plan_site(
            site.name,
            len(site),
            epsilon=config.epsilon,
            delta=config.delta,
            batch_size=config.batch_size,
            local_epochs=1,
            rounds=config.rounds,
            max_grad_norm=1.0,
            accountant=config.accountant,
        )
        assert list(spends[0].scopes) == [f"dataset:pneumoniamnist/institution:site{k + 1}"]
        mech = plan.mechanism
        assert (spends[0].noise_multiplier, spends[0].steps) == (mech.noise_multiplier, mech.steps)
        assert spends[0].run_id.startswith("flower-run")
    server = plan_server(config, N_NETWORK)
    spends = budget.Ledger(deployment.folder / "coordinator.sqlite", read_only=True).history()
    assert [(s.noise_multiplier, s.steps) for s in spends] == [
        (server.noise_multiplier, server.steps)
    ]


# ----------------------------------------------------------------------------------------------
# Flower's simulation runtime
# ----------------------------------------------------------------------------------------------


def test_flowers_simulation_equals_privkits_and_the_attacker_finds_updates_in_the_clear(
    synthetic_root: Path, tmp_path: Path
) -> None:
    pytest.importorskip("ray", reason="Flower's simulation runtime runs on Ray")
    from flower_recorder import received, recording_app

    config = FederatedConfig(
        **CONFIG
    )  # FedAvg weighted by record counts (site-level DP: the network test)
    weights = flower.simulate(
        config,
        data_root=synthetic_root,
        n_sites=N_SIMULATED,
        server_app=lambda run: recording_app(run, folder=tmp_path / "received"),
    )
    for w, e in zip(weights.values(), simulated(config, synthetic_root, N_SIMULATED), strict=True):
        np.testing.assert_allclose(w, e, atol=1e-6, rtol=0)
    sites = split_sites(
        data.load("pneumoniamnist", root=synthetic_root).train, n_sites=N_SIMULATED, seed=0
    )
    vectors = received(tmp_path / "received")
    for site, update in zip(
        sites, first_updates(config, sites)
    ):  # without secure aggregation: in plain sight
        assert best_match(update, vectors) > 0.999, site.name


# ----------------------------------------------------------------------------------------------
# The hospital's ClientApp, in process
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hospital(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Site]:
    """One hospital's folder (site1 of the simulation's split) and its records."""
    folder = tmp_path_factory.mktemp("hospital")
    with np.load(synthetic_root / "pneumoniamnist.npz") as npz:
        raw = {k: npz[k] for k in npz.files}
    n = len(raw["train_labels"])
    numbered = data.Split(torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), torch.zeros(n, 1))
    index = split_sites(numbered, n_sites=2, seed=0)[0].train.images.view(-1).long().numpy()
    _write_site(folder / "h" / "pneumoniamnist.npz", raw, index)
    return (
        folder / "h",
        split_sites(data.load("pneumoniamnist", root=synthetic_root).train, n_sites=2, seed=0)[0],
    )


def _context(root: Path, config: FederatedConfig, **node: object) -> Context:
    run = flower.run_config(config, n_sites=2)
    return Context(
        run_id=7,
        node_id=1,
        node_config={"data-root": str(root), "site": "site1", **node},
        state=RecordDict(),
        run_config=run,
    )


@pytest.mark.parametrize("kind", ["records", "equal", "site-level"])
def test_a_hospital_sends_its_update_and_the_agreed_count_only(
    hospital: tuple[Path, Site], kind: str
) -> None:
    root, site = hospital
    extra = dict(weighting="equal") if kind == "equal" else {}
    if kind == "site-level":
        extra = dict(site_level_epsilon=8.0, site_level_delta=0.1, update_clip=0.05)
    config = FederatedConfig(**{**CONFIG, **extra})
    context = _context(root, config)
    torch.manual_seed(config.seed)
    model = create_model(config.model)
    start = {k: v.detach() for k, v in model.named_parameters()}
    plan = plan_site(
        "site1",
        len(site),
        epsilon=config.epsilon,
        delta=config.delta,
        batch_size=config.batch_size,
        local_epochs=1,
        rounds=config.rounds,
        max_grad_norm=1.0,
        accountant=config.accountant,
    )
    stream = site_generator(config, "site1")  # the attacker's replay of the public seeded stream
    for _ in range(
        config.rounds
    ):  # a fresh client per message, as a SuperNode starts one: state carries over
        sent, count, metrics = flower.HospitalClient(context, run={}, node={}).fit(
            [v.numpy() for v in start.values()], {}
        )
        new, _, _ = local_training(
            model, start, site, plan, lr=config.lr, momentum=config.momentum, generator=stream
        )
        update = flatten(new) - flatten(start)
        if kind == "site-level":
            assert float(torch.cat([torch.as_tensor(u).ravel() for u in sent]).norm()) <= 0.05 * (
                1 + 1e-5
            )
            update = update * min(1.0, 0.05 / float(update.norm()))
        np.testing.assert_allclose(
            np.concatenate([u.ravel() for u in sent]), update.numpy(), atol=1e-6
        )
        assert metrics == {}  # no loss, no metric
        assert count == (len(site) if kind == "records" else 1)
    with pytest.raises(RuntimeError, match="charged for 2 rounds"):
        flower.HospitalClient(context, run={}, node={}).fit([v.numpy() for v in start.values()], {})


class _Ledger:
    """A ledger that records what it is asked, and may refuse."""

    def __init__(self, log: list, refuse: bool) -> None:
        self.log, self.refuse = log, refuse

    def charge(self, scopes: list, mechanism: Mechanism, **run: object) -> None:
        self.log.append(("charge", scopes, mechanism, run))
        if self.refuse:
            raise budget.BudgetExceededError("over budget")


@pytest.mark.parametrize("refuse", [False, True])
def test_a_hospital_charges_its_ledger_once_before_reading_a_record(
    hospital: tuple[Path, Site], monkeypatch: pytest.MonkeyPatch, refuse: bool
) -> None:
    root, site = hospital
    log: list = []
    monkeypatch.setattr(budget, "Ledger", lambda path: _Ledger(log, refuse))
    load = data.load
    monkeypatch.setattr(data, "load", lambda *a, **k: log.append(("read",)) or load(*a, **k))
    config = FederatedConfig(**CONFIG)
    context = _context(root, config, ledger=str(root / "ledger.sqlite"), **{"allow-seeded": True})
    torch.manual_seed(config.seed)
    start = [p.detach().numpy() for p in create_model(config.model).parameters()]
    if refuse:
        with pytest.raises(budget.BudgetExceededError):
            flower.HospitalClient(context, run={}, node={}).fit(start, {})
        assert [entry[0] for entry in log] == ["charge"]  # refused: not a record read
        return
    for _ in range(config.rounds):
        flower.HospitalClient(context, run={}, node={}).fit(start, {})
    assert [entry[0] for entry in log] == ["charge", "read", "read"]
    _, scopes, mechanism, run = log[0]
    plan = plan_site(
        "site1",
        len(site),
        epsilon=4.0,
        delta=1e-3,
        batch_size=32,
        local_epochs=1,
        rounds=2,
        max_grad_norm=1.0,
        accountant="rdp",
    )
    assert [str(s) for s in scopes] == ["dataset:pneumoniamnist/institution:site1"]
    assert (mechanism.noise_multiplier, mechanism.sample_rate, mechanism.steps) == (
        plan.mechanism.noise_multiplier,
        plan.mechanism.sample_rate,
        plan.mechanism.steps,
    )
    assert run["allow_seeded"] is True and run["randomness"].startswith("seeded:")
    assert str(run["run_id"]).startswith("flower-run7")


def test_a_hospital_without_its_file_fails_and_downloads_nothing(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(
        data, "_download", lambda *a: pytest.fail("a hospital must never download records")
    )
    context = _context(tmp_path, FederatedConfig(**CONFIG))
    torch.manual_seed(0)
    start = [p.detach().numpy() for p in create_model("cnn").parameters()]
    with pytest.raises(FileNotFoundError, match="records are missing"):
        flower.HospitalClient(context, run={}, node={}).fit(start, {})
    context.node_config.pop("site")
    (tmp_path / "pneumoniamnist.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="lacks 'site'"):
        flower.HospitalClient(context, run={}, node={}).fit(start, {})


@pytest.mark.parametrize(("run_asks", "node_asks"), [(True, False), (False, True), (False, False)])
def test_a_hospital_refuses_to_send_in_the_clear_when_secure_aggregation_is_asked(
    run_asks: bool, node_asks: bool
) -> None:
    run = flower.run_config(FederatedConfig(secure_aggregation=run_asks))
    context = Context(
        run_id=1,
        node_id=1,
        node_config={"require-secure-aggregation": node_asks},
        state=RecordDict(),
        run_config=run,
    )
    message = SimpleNamespace(
        metadata=SimpleNamespace(message_type="train"),  # a training message in the clear
        content=RecordDict({"config": ConfigRecord({})}),
    )
    called = []
    app = flower.make_client_app()
    if run_asks or node_asks:
        with pytest.raises(PermissionError, match="only under secure aggregation"):
            app._mods[0](message, context, lambda m, c: called.append(m))
        assert called == []
    else:
        app._mods[0](message, context, lambda m, c: called.append(m))
        assert called == [message]


# ----------------------------------------------------------------------------------------------
# The app's configuration
# ----------------------------------------------------------------------------------------------


def test_the_app_folder_configures_every_field_and_names_privkits_apps() -> None:
    with open(REPO / "apps" / "hospitals" / "pyproject.toml", "rb") as f:
        app = tomllib.load(f)["tool"]["flwr"]["app"]
    assert app["components"] == {
        "serverapp": "privkit.federated.flower:server_app",
        "clientapp": "privkit.federated.flower:client_app",
    }
    defaults = flower.run_config(FederatedConfig())
    assert list(app["config"]) == list(defaults)
    for key, value in app["config"].items():
        assert type(value) is type(defaults[key]), key
    config = flower.federated_config(app["config"])
    assert config.secure_aggregation and math.isfinite(
        config.epsilon
    )  # what a deployment should start from


def test_the_run_configuration_round_trips_and_names_what_it_refuses() -> None:
    config = FederatedConfig(
        rounds=3, epsilon=2.0, site_level_epsilon=5.0, weighting="equal", randomness="seeded"
    )
    assert flower.federated_config(flower.run_config(config, n_sites=4)) == config
    assert (
        flower.federated_config({**flower.run_config(config), "epsilon": 2}).epsilon == 2.0
    )  # a TOML integer
    with pytest.raises(ValueError, match="site_epsilons"):
        flower.run_config(FederatedConfig(site_epsilons={"a": 1.0}))
    with pytest.raises(ValueError, match=r"Unknown app key\(s\) \['n-hospitals'\]"):
        flower.run_config(config, n_hospitals=3)
    run = flower.run_config(config)
    del run["local-epochs"]
    with pytest.raises(ValueError, match="lacks 'local-epochs'"):
        flower.federated_config(run)


@pytest.mark.parametrize(("shares", "threshold"), [(3, 3), (2, 2), (3, 2)])
def test_a_hospital_joins_secagg_only_when_every_participant_masks_and_every_share_is_needed(
    shares: int, threshold: int
) -> None:
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

    setup = {
        Key.STAGE: Stage.SETUP,
        Key.SAMPLE_NUMBER: 3,
        Key.SHARE_NUMBER: shares,
        Key.THRESHOLD: threshold,
    }
    message = SimpleNamespace(
        metadata=SimpleNamespace(message_type="train"),
        content=RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(setup)}),
    )
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    policy = flower.make_client_app()._mods[0]
    if (shares, threshold) == (
        3,
        3,
    ):  # privkit's server: SecAgg+ proceeds (and wants the rest of its setup)
        with pytest.raises(KeyError, match="clipping_range"):
            policy(message, context, lambda m, c: pytest.fail("no training during setup"))
    else:  # a server thinning the masks or the threshold is refused
        with pytest.raises(PermissionError, match="every participant as its neighbour"):
            policy(message, context, lambda m, c: pytest.fail("no training during setup"))


# ----------------------------------------------------------------------------------------------
# privkit flower server|client: options from the config dataclasses
# ----------------------------------------------------------------------------------------------


class _Started:
    """Stands in for subprocess.run: records the command and the run configuration it names."""

    def __init__(self) -> None:
        self.argv: list[str] = []
        self.run: dict = {}

    def __call__(self, argv: list[str]) -> SimpleNamespace:
        self.argv = list(argv)
        if "--run-config" in argv:  # read while it exists: the command deletes it afterwards
            self.run = tomllib.loads(Path(argv[argv.index("--run-config") + 1]).read_text())
        return SimpleNamespace(returncode=0)


def test_privkit_flower_server_runs_the_app_with_its_configuration_and_the_options_given(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from privkit import cli
    from privkit.federated import deployment

    started = _Started()
    monkeypatch.setattr(subprocess, "run", started)
    app = REPO / "apps" / "hospitals"
    argv = ["flower", "server", "hospitals", "--app", str(app), "--rounds", "2"]
    argv += ["--epsilon", "4", "--site-level-epsilon", "inf", "--no-secure-aggregation"]
    assert cli.main([*argv, "--n-sites", "5", "--out", "/srv/m.npz"]) == 0
    assert started.argv[0].endswith("flwr") and started.argv[1:4] == ["run", str(app), "hospitals"]
    assert started.argv[4] == "--run-config" and started.argv[-1] == "--stream"
    declared = deployment.app_run_config(app)
    changed = {"rounds": 2, "epsilon": 4.0, "site-level-epsilon": math.inf}
    changed |= {"secure-aggregation": False, "n-sites": 5, "out": "/srv/m.npz"}
    assert started.run == {**declared, **changed}  # the rest as the app folder declares it
    # Every run-configuration key is an option; privkit's checks run before Flower starts.
    assert set(deployment.run_options()) == set(declared)
    started.argv = []
    assert cli.main(["flower", "server", "hospitals", "--app", str(app), "--lr", "-1"]) == 2
    assert "Expected lr=-1.0 > 0" in capsys.readouterr().err and started.argv == []


def test_privkit_flower_client_starts_an_authenticated_tls_supernode_with_its_node_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from flwr.common.config import parse_config_args

    from privkit import cli

    started = _Started()
    monkeypatch.setattr(subprocess, "run", started)
    root = tmp_path / "hospital a"  # a space survives the quoting
    argv = ["flower", "client", "--superlink", "coord.example.org:9093"]
    argv += ["--root-certificates", "ca.crt", "--auth-key", "keys/h-a", "--port", "9095"]
    argv += ["--data-root", str(root), "--site", "h-a", "--require-secure-aggregation"]
    assert cli.main(argv) == 0
    got = started.argv
    assert got[0].endswith("flower-supernode") and "--insecure" not in got
    flag = lambda name: got[got.index(name) + 1]  # noqa: E731
    assert (flag("--superlink"), flag("--root-certificates")) == (
        "coord.example.org:9093",
        "ca.crt",
    )
    assert (flag("--auth-supernode-private-key"), flag("--port")) == ("keys/h-a", "9095")
    assert parse_config_args([flag("--node-config")]) == {  # as flower-supernode reads it
        "data-root": str(root),
        "site": "h-a",
        "ledger": "",
        "allow-seeded": False,
        "require-secure-aggregation": True,
        "device": "cpu",
    }
    with pytest.raises(SystemExit):  # the hospital's records and name are required
        cli.main(argv[:-5])
