"""What configures privkit's Flower deployment, and the commands that start its two sides.

Three configurations, each one dataclass, from which the app folder, the run configuration and
the ``privkit flower server|client`` options are all derived (no second list):

* :class:`~privkit.federated.algorithms.FederatedConfig`: the training, in kebab case
  (``local-epochs``), minus ``site_epsilons`` (every hospital runs the run's epsilon; its own
  ledger refuses more) and ``device`` (each hospital's own);
* :class:`AppConfig`: the app's own run-configuration keys (``n-sites``, ``out``, ...);
* :class:`NodeConfig`: a hospital's SuperNode configuration (``--node-config``): its records,
  name and ledger, which never come from the coordinator.

``privkit flower server`` runs ``flwr run`` of the app folder against a SuperLink with the run
configuration the app folder declares, overridden by the options given; ``privkit flower
client`` starts ``flower-supernode`` with TLS, its authentication key and its node
configuration. Nothing here imports Flower (the commands run its executables) or torch (a
SuperNode imports this module for every message it handles).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomllib

if TYPE_CHECKING:
    from privkit.federated.algorithms import FederatedConfig

NOT_IN_RUN = ("site_epsilons", "device")  # FederatedConfig fields a run configuration omits


@dataclass(frozen=True)
class AppConfig:
    """The app's own run-configuration keys (``apps/hospitals/pyproject.toml``)."""

    n_sites: int = field(
        default=3, metadata={"help": "hospitals in the federation: all must connect"}
    )
    dataset: str = field(
        default="pneumoniamnist", metadata={"help": "each hospital reads <data-root>/<dataset>.npz"}
    )
    image_size: int = 28
    out: str = field(
        default="global.npz",
        metadata={"help": "the final model, written on the SuperLink's machine (absolute path)"},
    )
    server_ledger: str = field(
        default="", metadata={"help": "the coordinator's ledger for site-level DP ('': none)"}
    )
    server_allow_seeded: bool = field(
        default=False, metadata={"help": "the coordinator's ledger accepts a seeded run"}
    )
    max_records: int = field(
        default=1000, metadata={"help": "SecAgg+'s largest weight under weighting='records'"}
    )
    secagg_clipping_range: float = field(
        default=8.0, metadata={"help": "SecAgg+ quantises update coordinates in [-r, r]"}
    )
    round_timeout: float = field(
        default=3600.0, metadata={"help": "seconds a round waits for every hospital"}
    )
    partition_scheme: str = field(
        default="iid",
        metadata={"help": "research: with node config partition-id, split as split_sites"},
    )
    partition_alpha: float = 0.5
    partition_seed: int = 0


APP_KEYS: dict[str, Any] = {
    f.name.replace("_", "-"): f.default for f in dataclasses.fields(AppConfig)
}  # the app's keys in kebab case, with their defaults


@dataclass(frozen=True)
class NodeConfig:
    """A hospital's SuperNode configuration: everything about the hospital; none of it comes
    from the coordinator."""

    data_root: str = field(metadata={"help": "the folder holding the hospital's <dataset>.npz"})
    site: str = field(metadata={"help": "the hospital's institution id in its ledger's scope"})
    ledger: str = field(
        default="",
        metadata={"help": "its privacy ledger, charged once per run before a record is read"},
    )
    allow_seeded: bool = field(
        default=False, metadata={"help": "accept a randomness='seeded' run (public data only)"}
    )
    require_secure_aggregation: bool = field(
        default=False, metadata={"help": "refuse to send an update in the clear"}
    )
    device: str = field(default="cpu", metadata={"help": "where it trains: cpu, cuda, ..."})

    def text(self) -> str:
        """The ``--node-config`` string of ``flower-supernode``.

        >>> for item in NodeConfig("/data/h", "h1", allow_seeded=True).text().split():
        ...     print(item)
        data-root="/data/h"
        site="h1"
        ledger=""
        allow-seeded=true
        require-secure-aggregation=false
        device="cpu"
        """
        return " ".join(
            f"{kebab(f.name)}={_toml_value(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
        )


def kebab(name: str) -> str:
    return name.replace("_", "-")


def run_config(config: FederatedConfig, **app: Any) -> dict[str, Any]:
    """The run configuration of ``config`` and the app's keys (``n_sites=5`` sets ``n-sites``).

    >>> from privkit.federated.algorithms import FederatedConfig
    >>> rc = run_config(FederatedConfig(rounds=2, epsilon=4.0), n_sites=5)
    >>> rc["rounds"], rc["epsilon"], rc["site-level-epsilon"], rc["n-sites"], rc["dataset"]
    (2, 4.0, inf, 5, 'pneumoniamnist')
    """
    if config.site_epsilons:
        raise ValueError(
            f"site_epsilons={dict(config.site_epsilons)} is not offered on the Flower path: every "
            "hospital runs the run's epsilon (its ledger's budget refuses more)."
        )
    values = {
        kebab(f.name): getattr(config, f.name)
        for f in dataclasses.fields(config)
        if f.name not in NOT_IN_RUN
    }
    unknown = sorted(set(map(kebab, app)) - set(APP_KEYS))
    if unknown:
        raise ValueError(f"Unknown app key(s) {unknown}; the app's keys are {sorted(APP_KEYS)}.")
    return {**values, **APP_KEYS, **{kebab(k): v for k, v in app.items()}}


def federated_config(run: Mapping[str, Any], *, device: str = "cpu") -> FederatedConfig:
    """The :class:`~privkit.federated.algorithms.FederatedConfig` a run configuration states."""
    from privkit.federated.algorithms import FederatedConfig

    values = {}
    for f in dataclasses.fields(FederatedConfig):
        if f.name in NOT_IN_RUN:
            continue
        if kebab(f.name) not in run:
            raise ValueError(
                f"The run configuration lacks {kebab(f.name)!r}; apps/hospitals/pyproject.toml "
                "declares every FederatedConfig field."
            )
        value = run[kebab(f.name)]
        values[f.name] = (
            float(value) if isinstance(f.default, float) and not isinstance(value, bool) else value
        )
    return FederatedConfig(**values, device=device)


def run_options() -> dict[str, dataclasses.Field]:
    """Every key of a run configuration, kebab case -> the dataclass field that defines it."""
    from privkit.federated.algorithms import FederatedConfig

    fields = [f for f in dataclasses.fields(FederatedConfig) if f.name not in NOT_IN_RUN]
    return {kebab(f.name): f for f in [*fields, *dataclasses.fields(AppConfig)]}


def app_run_config(app: str | Path) -> dict[str, Any]:
    """The run configuration an app folder declares (``[tool.flwr.app.config]``)."""
    path = Path(app) / "pyproject.toml"
    if not path.is_file():
        raise FileNotFoundError(f"No Flower app at {app}: {path} is missing.")
    with path.open("rb") as f:
        return dict(tomllib.load(f)["tool"]["flwr"]["app"]["config"])


def write_run_config(values: Mapping[str, Any], path: str | Path) -> Path:
    """``values`` as the TOML file ``flwr run --run-config`` reads."""
    path = Path(path)
    path.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items()))
    return path


def server_command(app: str | Path, superlink: str, run_config_file: str | Path) -> list[str]:
    """``flwr run`` of ``app`` on the SuperLink named ``superlink`` in Flower's CLI
    configuration, streaming its log until the run ends."""
    return [
        executable("flwr"),
        "run",
        str(app),
        superlink,
        "--run-config",
        str(run_config_file),
        "--stream",
    ]


def client_command(
    node: NodeConfig,
    *,
    superlink: str,
    root_certificates: str,
    auth_key: str,
    port: int | None = None,
) -> list[str]:
    """``flower-supernode`` for one hospital: TLS verified against ``root_certificates``,
    authenticated by its private key, configured by ``node`` (never insecure)."""
    argv = [
        executable("flower-supernode"),
        "--superlink",
        superlink,
        "--root-certificates",
        str(root_certificates),
        "--auth-supernode-private-key",
        str(auth_key),
        "--node-config",
        node.text(),
    ]
    return argv + (["--port", str(port)] if port is not None else [])


def executable(name: str) -> str:
    """Flower's executable ``name``: next to this Python's, else on the PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.is_file() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"Flower's {name!r} is not installed: pip install 'privkit[flower]'."
        )
    return found


def _toml_value(value: Any) -> str:
    """A TOML value, as Flower's ``--run-config`` and ``--node-config`` parse it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else "-inf"
    return json.dumps(value)
