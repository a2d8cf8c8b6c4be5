"""The ``privkit`` command: train one model, or reproduce every figure.

privkit train --dataset pneumoniamnist --model cnn --epsilon 8 --epochs 10
privkit train --epsilon inf                # the non-private baseline
privkit reproduce --profile quick
privkit bench --json bench.json            # epoch times of every engine on this device
privkit bench --accounting                 # the accountant's times, against the old way
privkit budget set --scope dataset:pneumoniamnist --epsilon 4 --delta 1e-5
privkit budget show                        # budgets, spent epsilon (composed and summed)
privkit budget verify                      # check the ledger's hash chain, print its head
privkit flower certs --out certs --host coordinator.example.org   # a CA and the SuperLink's TLS files
privkit flower key --out keys --name hospital-a                    # a SuperNode's authentication keys
privkit flower server hospitals --n-sites 3 --rounds 10 --epsilon 8 --out /srv/global.npz  # flwr run
privkit flower client --superlink coordinator.example.org:9093 --root-certificates ca.crt \
    --auth-key keys/hospital-a --data-root /data/hospital-a --site hospital-a    # a SuperNode
privkit budget init postgresql://postgres@dbhost/privacy   # a ledger a hospital shares (as a superuser)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Sequence

from privkit import accounting, budget, data, mechanism, randomness
from privkit.budget import LedgerError
from privkit.engine import DP_BACKENDS
from privkit.executors import UnitsFailedError
from privkit.models import MODELS
from privkit.train import TrainConfig


def _float(text: str) -> float:
    """Floats including ``inf``; argparse's ``float`` type already accepts it, this names it."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'inf', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="privkit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    d = TrainConfig()
    t = commands.add_parser(
        "train",
        help="train one model with DP-SGD and print its result",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    t.add_argument("--dataset", default=d.dataset, choices=data.DATASETS)
    t.add_argument("--model", default=d.model, choices=sorted(MODELS))
    t.add_argument("--backend", default=d.backend, choices=DP_BACKENDS)
    t.add_argument(
        "--epsilon",
        type=_float,
        default=d.epsilon,
        help="target epsilon; 'inf' trains without privacy",
    )
    t.add_argument(
        "--noise-multiplier", type=_float, default=None, help="fix the noise instead of --epsilon"
    )
    t.add_argument("--delta", type=_float, default=d.delta)
    t.add_argument(
        "--max-grad-norm", type=_float, default=d.max_grad_norm, help="per-sample clipping norm C"
    )
    t.add_argument("--epochs", type=int, default=d.epochs)
    t.add_argument(
        "--batch-size", type=int, default=d.batch_size, help="expected Poisson batch size"
    )
    t.add_argument("--lr", type=_float, default=d.lr)
    t.add_argument("--momentum", type=_float, default=d.momentum)
    t.add_argument(
        "--ema",
        type=_float,
        default=d.ema,
        help="decay of a moving average of the parameters (0: off)",
    )
    t.add_argument("--accountant", default=d.accountant, choices=accounting.UPPER_BOUNDS)
    t.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help="initialisation (and the noise with --randomness seeded)",
    )
    t.add_argument(
        "--randomness",
        default=d.randomness,
        choices=randomness.MODES,
        help="noise and Poisson draws from the OS (secure), or from the seed and the run (seeded: "
        "replayable by anyone who reads the configuration; public data only)",
    )
    t.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1, ...")
    t.add_argument(
        "--data-root",
        default=None,
        help="folder with <dataset>.npz (default: $PRIVKIT_DATA, else medmnist's)",
    )
    t.add_argument(
        "--out", default=None, help="append the result to <out>/metrics.csv (reused if finished)"
    )
    t.add_argument("--experiment", default="cli", help="experiment name recorded in the table")
    t.add_argument(
        "--ledger",
        default=None,
        help="privacy-budget ledger (a file or postgresql:// URL) to charge before any data are "
        "read (default: $PRIVKIT_LEDGER if set)",
    )
    t.add_argument(
        "--scope",
        action="append",
        default=None,
        help="a scope inside the dataset charged in addition to dataset:<name>; repeat for several",
    )
    t.add_argument(
        "--allow-seeded",
        action="store_true",
        help="let the ledger charge a --randomness seeded run (recorded as such)",
    )
    t.add_argument("--no-progress", action="store_true")

    ray_help = (
        "as Ray tasks on the cluster at ADDRESS (auto: the one started on this machine; no ADDRESS: "
        "$RAY_ADDRESS, else a new local one); see privkit.executors"
    )
    b = commands.add_parser(
        "bench",
        help="time every training engine on one device, or the accountant (a benchmark)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    b.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    b.add_argument("--model", default="cnn", choices=sorted(MODELS))
    b.add_argument("--batch-size", type=int, default=256)
    b.add_argument(
        "--epochs", type=int, default=2, help="timed epochs per row, after one warm-up epoch"
    )
    b.add_argument(
        "--stacks", type=int, nargs="*", default=[8, 32], help="K of the fast-stack-K rows"
    )
    b.add_argument(
        "--data-root",
        default=None,
        help="folder with pneumoniamnist.npz (else random data of its size)",
    )
    b.add_argument("--json", default=None, help="also write the report as JSON here")
    b.add_argument(
        "--sweep",
        default=None,
        metavar="YAML",
        help="also time this experiment's full epsilon sweep, e.g. experiments/privacy_utility.yaml",
    )
    b.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help=f"instead, time units of work run here and {ray_help}, 1 and 2 at a time",
    )
    b.add_argument(
        "--units", type=int, default=8, help="units of work (one model each) timed per row of --ray"
    )
    b.add_argument("--no-progress", action="store_true")
    b.add_argument(
        "--accounting",
        action="store_true",
        help="time the accountant instead (epsilon, calibration, curves, individual plans) against "
        "the way privkit computed it before, in the same run",
    )
    b.add_argument(
        "--plan-groups",
        type=int,
        nargs="*",
        default=[2, 3, 5],
        choices=[2, 3, 5],
        help="with --accounting: numbers of groups of the individual.plan rows",
    )
    b.add_argument(
        "--all-baselines",
        action="store_true",
        help="with --accounting: also time the old individual.plan for 3 and 5 groups (minutes)",
    )

    r = commands.add_parser(
        "reproduce", help="execute every experiment notebook (what `make reproduce` does)"
    )
    r.add_argument(
        "--profile",
        default="full",
        help="full (GPU) or quick (CPU), as defined in experiments/*.yaml",
    )
    r.add_argument("--force", action="store_true", help="re-execute notebooks that are up to date")
    r.add_argument("--experiments-dir", default="experiments")
    r.add_argument("--notebooks-dir", default="notebooks")
    r.add_argument("--results-dir", default="results")
    r.add_argument("--figures-dir", default="figures")
    r.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help=f"train the notebooks' sweeps {ray_help}",
    )
    c = commands.add_parser(
        "site", help="execute the tutorials and build the course site (what `make site` does)"
    )
    c.add_argument(
        "--out",
        default="results/course",
        help="executed notebooks in OUT/notebooks, the site in OUT/site",
    )
    c.add_argument(
        "--no-solutions", action="store_true", help="leave the solutions notebooks out of the site"
    )
    c.add_argument(
        "--data-root", default=None, help="folder with pneumoniamnist.npz (else $PRIVKIT_DATA)"
    )
    c.add_argument("--force", action="store_true", help="re-execute notebooks that are up to date")
    _add_budget_parser(commands)
    _add_flower_parser(commands)
    return parser


def _add_flower_parser(commands: argparse._SubParsersAction) -> None:
    from privkit.federated import deployment

    p = commands.add_parser(
        "flower", help="a Flower federation: credentials, the coordinator's run, a hospital's node"
    )
    sub = p.add_subparsers(dest="flower_command", required=True)
    c = sub.add_parser(
        "certs", help="the coordinator: a CA and the SuperLink's TLS certificate and key"
    )
    c.add_argument(
        "--out", required=True, help="folder for ca.crt, ca.key, superlink.crt, superlink.key"
    )
    c.add_argument(
        "--host",
        required=True,
        action="append",
        help="a name or IP address by which the hospitals reach the SuperLink; repeat for several",
    )
    c.add_argument("--days", type=int, default=365, help="validity of the certificates")
    k = sub.add_parser(
        "key", help="a hospital: its SuperNode's authentication key pair (send only the .pub)"
    )
    k.add_argument("--out", required=True, help="folder for <name> (private) and <name>.pub")
    k.add_argument("--name", required=True, help="the hospital's institution id, e.g. hospital-a")
    s = sub.add_parser(
        "server",
        help="the coordinator: flwr run of the app on a SuperLink, the run's settings as options",
        description="Runs `flwr run APP SUPERLINK --stream` with the app's run configuration "
        "(its pyproject.toml), overridden by the options given: every FederatedConfig field "
        "(privkit.federated.algorithms) and the app's keys (privkit.federated.deployment.AppConfig).",
    )
    s.add_argument(
        "superlink", help="the SuperLink's name in Flower's config (~/.flwr/config.toml)"
    )
    s.add_argument("--app", default="apps/hospitals", help="the Flower app folder")
    for key, f in deployment.run_options().items():
        _add_field_option(
            s, key, f, help=f.metadata.get("help", f"FederatedConfig.{f.name}"), given_only=True
        )
    c = sub.add_parser(
        "client",
        help="a hospital: its SuperNode (flower-supernode) with TLS, its key, its records and ledger",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    c.add_argument("--superlink", required=True, help="the SuperLink's Fleet API as host:port")
    c.add_argument(
        "--root-certificates", required=True, help="the coordinator's CA certificate (ca.crt)"
    )
    c.add_argument(
        "--auth-key", required=True, help="the hospital's private key (privkit flower key)"
    )
    c.add_argument("--port", type=int, default=None, help="its Runtime API port (Flower: 9094)")
    for f in dataclasses.fields(deployment.NodeConfig):
        _add_field_option(c, deployment.kebab(f.name), f, help=f.metadata.get("help"))


def _add_field_option(
    parser: argparse.ArgumentParser,
    key: str,
    f: dataclasses.Field,
    *,
    help: str | None,
    given_only: bool = False,
) -> None:
    """``--key`` for a config dataclass field, typed by its default (``--key/--no-key`` for a
    flag); required without a default. ``given_only``: the option defaults to ``None``, "not
    given" (``server``: the app folder's value stands)."""
    required = f.default is dataclasses.MISSING
    default = None if required or given_only else f.default
    kind = str if required else type(f.default)
    if kind is bool:
        action = argparse.BooleanOptionalAction
        parser.add_argument(f"--{key}", action=action, default=default, help=help)
        return
    kind = _float if kind is float else kind
    parser.add_argument(f"--{key}", type=kind, required=required, default=default, help=help)


def _flower(args: argparse.Namespace) -> int:
    from privkit.federated import credentials, deployment

    if args.flower_command in ("server", "client"):
        import subprocess
        import tempfile

        if args.flower_command == "client":
            node = deployment.NodeConfig(
                **{f.name: getattr(args, f.name) for f in dataclasses.fields(deployment.NodeConfig)}
            )
            argv = deployment.client_command(
                node,
                superlink=args.superlink,
                root_certificates=args.root_certificates,
                auth_key=args.auth_key,
                port=args.port,
            )
            return subprocess.run(argv).returncode
        run = deployment.app_run_config(args.app)
        for key in deployment.run_options():
            value = getattr(args, key.replace("-", "_"))
            if value is not None:
                run[key] = value
        deployment.federated_config(run)  # privkit's checks, before anything starts
        with tempfile.TemporaryDirectory() as folder:
            path = deployment.write_run_config(run, f"{folder}/run.toml")
            return subprocess.run(
                deployment.server_command(args.app, args.superlink, path)
            ).returncode
    if args.flower_command == "certs":
        made = credentials.make_certificates(args.out, hosts=args.host, days=args.days)
        print(f"CA: {made.ca_certificate} (give it to every hospital; keep {made.ca_key} offline)")
        print(
            f"SuperLink: --ssl-ca-certfile {made.ca_certificate} --ssl-certfile {made.superlink_certificate}"
            f" --ssl-keyfile {made.superlink_key}"
        )
    else:
        private, public = credentials.make_supernode_key(args.out, name=args.name)
        print(
            f"SuperNode: --auth-supernode-private-key {private} (stays at the hospital)\n"
            f"Coordinator: flwr supernode register {public.name} <superlink> --name {args.name}"
        )
    return 0


def _add_budget_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "budget", help="privacy budgets: set them, show what was spent, list and verify the events"
    )
    sub = p.add_subparsers(dest="budget_command", required=True)
    ledger = argparse.ArgumentParser(add_help=False)
    ledger.add_argument(
        "--ledger",
        default=None,
        metavar="LOCATION",
        help="ledger file, sqlite:///PATH or postgresql://USER@HOST/DATABASE (default: "
        "$PRIVKIT_LEDGER, else $XDG_DATA_HOME/privkit/ledger.sqlite)",
    )
    scope_help = (
        "dataset:<name>[/institution:<id>][/group:<id>], <name> known to privkit or registered"
    )
    actor = argparse.ArgumentParser(add_help=False)
    actor.add_argument("--actor", default=None, help="who does it (default: user@host)")
    s = sub.add_parser(
        "set",
        parents=[ledger, actor],
        help="set, lower or (with --raise --reason) raise the budget of a scope",
    )
    s.add_argument("--scope", required=True, help=scope_help)
    s.add_argument("--epsilon", type=_float, required=True)
    s.add_argument("--delta", type=_float, required=True)
    s.add_argument(
        "--raise",
        dest="raise_budget",
        action="store_true",
        help="allow raising the epsilon or delta of the scope's current budget (needs --reason)",
    )
    s.add_argument(
        "--reason", default=None, help="why; required with --raise, recorded, shown by history"
    )
    r = sub.add_parser(
        "register", parents=[ledger, actor], help="register a dataset privkit does not know"
    )
    r.add_argument(
        "--dataset", required=True, help="its name, in lower case (scopes: dataset:<name>...)"
    )
    r.add_argument("--size", type=int, required=True, help="its number of records")
    r.add_argument("--description", default=None)
    for name, what in (
        ("show", "budgets, spent epsilon (composed and summed) and remaining, per scope"),
        ("history", "every event (budgets, registrations, spends), in order"),
    ):
        sub.add_parser(name, parents=[ledger], help=what).add_argument(
            "--scope", default=None, help=f"only this scope and what lies in it: {scope_help}"
        )
    v = sub.add_parser(
        "verify", parents=[ledger], help="check the ledger's hash chain and print its head"
    )
    v.add_argument(
        "--head",
        default=None,
        help="a head recorded earlier (an anchor): check that it is still on the chain",
    )
    c = sub.add_parser(
        "charge",
        parents=[ledger, actor],
        help="record a run's spend by hand, or refuse it (exit 2)",
    )
    c.add_argument(
        "--scope", required=True, action="append", help=f"{scope_help}; repeat for several"
    )
    c.add_argument("--noise-multiplier", type=_float, required=True)
    c.add_argument("--sample-rate", type=_float, required=True)
    c.add_argument("--steps", type=int, required=True)
    c.add_argument("--delta", type=_float, required=True)
    c.add_argument("--run-id", required=True)
    c.add_argument("--accountant", default="prv", choices=("prv", "rdp"))
    c.add_argument(
        "--randomness",
        default="secure",
        help="secure (OS entropy), or seeded:<hex id>: noise that follows from a recorded seed",
    )
    c.add_argument(
        "--allow-seeded", action="store_true", help="accept a seeded run (public benchmarks only)"
    )
    i = sub.add_parser(
        "init",
        help="create a ledger, or bring its schema up to date (PostgreSQL: as a "
        "superuser; with the roles privkit_steward and privkit_researcher)",
    )
    i.add_argument(
        "location",
        nargs="?",
        default=None,
        help="file, sqlite:///PATH or postgresql://USER@HOST/DATABASE (default: $PRIVKIT_LEDGER)",
    )
    g = sub.add_parser(
        "grant",
        parents=[ledger],
        help="let a database role see and charge a dataset (PostgreSQL, a steward's)",
    )
    g.add_argument("--dataset", required=True, help="a dataset known to privkit or registered")
    g.add_argument(
        "--role", required=True, help="a researcher's database role, or a group role of them"
    )
    g.add_argument("--revoke", action="store_true", help="take the grant back")
    m = sub.add_parser(
        "migrate", help="copy every event of a ledger, hash chain intact, into a new one"
    )
    m.add_argument("source", help="the ledger to copy (file or URL); read only")
    m.add_argument(
        "destination", help="a new ledger without events (PostgreSQL: after init, as a steward)"
    )


def _event_row(event: budget.Event, previous: dict[str, budget.Budget]) -> dict[str, object]:
    """One line of ``privkit budget history``; ``previous``: the last budget of each scope so far."""
    row = {"event": event.seq, "time": event.time[:19], "kind": event.kind}
    if isinstance(event, budget.Budget):
        old = previous.get(event.scope)
        raised = old is not None and (event.epsilon > old.epsilon or event.delta > old.delta)
        previous[event.scope] = event
        return row | {
            "kind": "raise" if raised else "budget",
            "scope": event.scope,
            "epsilon": f"{event.epsilon:g}",
            "delta": f"{event.delta:g}",
            "actor": event.actor,
            "note": event.reason or "",
        }
    if isinstance(event, budget.Registration):
        return row | {
            "scope": str(budget.Scope(event.name)),
            "run/size": event.size,
            "actor": event.actor,
            "note": event.description or "",
        }
    return row | {
        "scope": ",".join(event.scopes),
        "epsilon": f"{event.epsilon:.3f}",
        "delta": f"{event.delta:g}",
        "run/size": event.run_id,
        "actor": event.actor,
        "noise": f"{event.noise_multiplier:g}",
        "sample_rate": f"{event.sample_rate:.4g}",
        "steps": str(event.steps),
        "note": event.randomness,
    }


def _budget(args: argparse.Namespace) -> int:
    import pandas as pd

    if args.budget_command == "init":
        print(budget.init(args.location))
        return 0
    if args.budget_command == "migrate":
        v = budget.migrate(args.source, args.destination)
        print(f"Copied {v.events} events: hash chain intact, head {v.head} (the source's).")
        return 0
    ledger = budget.Ledger(
        args.ledger, read_only=args.budget_command in ("show", "history", "verify")
    )
    if args.budget_command == "grant":
        ledger.grant(args.dataset, args.role, revoke=args.revoke)
        granted = "no longer granted to" if args.revoke else "granted to"
        print(f"{budget.Scope(args.dataset)} {granted} the role {args.role} ({ledger.location})")
    elif args.budget_command == "set":
        b = ledger.set_budget(
            args.scope,
            epsilon=args.epsilon,
            delta=args.delta,
            actor=args.actor,
            raise_budget=args.raise_budget,
            reason=args.reason,
        )
        why = f"; reason: {b.reason}" if b.reason else ""
        print(
            f"{b.scope}: budget epsilon={b.epsilon:g}, delta={b.delta:g} (set {b.time} by {b.actor}{why}; "
            f"{ledger.location}, head {b.hash})"
        )
    elif args.budget_command == "register":
        r = ledger.register_dataset(
            args.dataset, size=args.size, actor=args.actor, description=args.description
        )
        print(
            f"{budget.Scope(r.name)} registered with {r.size} records ({r.time} by {r.actor}; "
            f"{ledger.location}, head {r.hash})"
        )
    elif args.budget_command == "verify":
        v = ledger.verify(head=args.head)
        print(f"{ledger.location}: hash chain intact, {v.events} events, head {v.head}")
        if args.head:
            print(
                f"The head {args.head} recorded earlier is event {v.anchor}: nothing up to it was changed."
            )
        print(
            "Record the head outside the ledger (run provenance, a steward's notes): verify --head HASH "
            "later catches a rewrite of the whole ledger, which an unkeyed chain cannot."
        )
    elif args.budget_command == "show":
        table = ledger.show(args.scope)
        num = lambda fmt: lambda x: "-" if pd.isna(x) else format(x, fmt)  # noqa: E731
        print(
            pd.DataFrame(
                {
                    "scope": table["scope"],
                    "budget": [
                        f"eps={e:g} delta={d:g}" if e == e else "no budget"
                        for e, d in zip(table["budget_epsilon"], table["budget_delta"])
                    ],
                    "spent (composed)": table["spent_epsilon_composed"].map(num(".3f")),
                    "delta": table["spent_delta"].map(num("g")),
                    "spent (sum)": table["spent_epsilon_sum"].map(num(".3f")),
                    "sum of deltas": table["spent_delta_sum"].map(num("g")),
                    "remaining": table["remaining"].map(num(".3f")),
                    "spends": table["n_spends"],
                }
            ).to_string(index=False)
            if len(table)
            else "No budgets or spends yet."
        )
        print(
            f"({ledger.location}; spent for the worst-off patient of each scope. composed: all spends "
            "composed by the accountant, at the budget's delta; sum: the runs' own epsilons added, at "
            "their deltas added)"
        )
    elif args.budget_command == "history":
        previous: dict[str, budget.Budget] = {}
        every = {
            (e.kind, e.id): _event_row(e, previous) for e in ledger.events()
        }  # all: to tell raises
        rows = [every[e.kind, e.id] for e in ledger.events(args.scope)]
        columns = [
            "event",
            "time",
            "kind",
            "scope",
            "epsilon",
            "delta",
            "run/size",
            "noise",
            "sample_rate",
            "steps",
            "actor",
            "note",
        ]
        table = pd.DataFrame(rows, columns=columns).fillna("")
        print(table.to_string(index=False) if rows else "No events yet.")
    else:
        run = mechanism.plan(
            noise_multiplier=args.noise_multiplier,
            sample_rate=args.sample_rate,
            steps=args.steps,
            delta=args.delta,
            accountant=args.accountant,
        )
        s = ledger.charge(
            args.scope,
            run,
            run_id=args.run_id,
            actor=args.actor or budget.default_actor(),
            randomness=args.randomness,
            allow_seeded=args.allow_seeded,
        )
        print(
            f"charged spend {s.id}: epsilon={s.epsilon:.3f} at delta={s.delta:g} on {', '.join(s.scopes)} "
            f"({s.randomness}); ledger head {s.hash}"
        )
    return 0


def _train(args: argparse.Namespace) -> int:
    from privkit import experiments
    from privkit.train import train

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    if args.noise_multiplier is not None:  # --noise-multiplier replaces the default --epsilon
        values["epsilon"] = None
    config = TrainConfig(**values)  # every field has its --option of the same name
    path = args.ledger or os.environ.get("PRIVKIT_LEDGER")
    ledger = budget.Ledger(path) if path else None
    if args.scope and ledger is None:
        raise ValueError(
            f"--scope {args.scope} needs a ledger to charge (--ledger or $PRIVKIT_LEDGER)."
        )
    if args.out:
        if args.scope:
            raise ValueError(
                "--scope is for a single run without --out (a sweep charges dataset:<name>)."
            )
        table = experiments.sweep(
            [config],
            experiment=args.experiment,
            out_dir=args.out,
            ledger=ledger,
            allow_seeded=args.allow_seeded,
            progress=not args.no_progress,
        )
        summary = {
            "run_id": table["run_id"].iloc[0],
            "epsilon_spent": float(table["epsilon_spent"].iloc[0]),
            "noise_multiplier": float(table["noise_multiplier"].iloc[0]),
            "metrics": {f"{r.split}_{r.metric}": r.value for r in table.itertuples()},
            "table": f"{args.out}/metrics.csv",
        }
    else:
        result = train(
            config,
            ledger=ledger,
            scopes=args.scope,
            allow_seeded=args.allow_seeded,
            progress=not args.no_progress,
        )
        m = result.mechanism
        summary = {
            "backend": result.backend,
            "device": result.device,
            "randomness": config.randomness,
            "epsilon_spent": m.epsilon,
            "delta": m.delta,
            "noise_multiplier": m.noise_multiplier,
            "sample_rate": m.sample_rate,
            "steps": m.steps,
            "seconds": round(result.seconds, 2),
            "metrics": {
                f"{s}_{k}": v for s, vals in result.metrics.items() for k, v in vals.items()
            },
        }
    print(json.dumps(summary, indent=2, default=lambda x: "inf" if x == math.inf else str(x)))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from privkit import bench

    if args.accounting or args.ray is not None:
        if args.accounting:
            from privkit import bench_accounting

            report = bench_accounting.run(
                plan_groups=args.plan_groups, all_baselines=args.all_baselines
            )
            print(bench_accounting.format_table(report))
        else:
            timed = bench.time_ray(
                address=args.ray or None,
                units=args.units,
                epochs=args.epochs,
                data_root=args.data_root,
                progress=not args.no_progress,
            )
            report = {"ray": timed}
            print(bench.format_ray(report["ray"]))
        if args.json:
            bench.write_json(report, args.json)
        return 0
    report = bench.run(
        device=args.device,
        model=args.model,
        data_root=args.data_root,
        batch_size=args.batch_size,
        epochs=args.epochs,
        stacks=args.stacks,
        progress=not args.no_progress,
    )
    if args.sweep:
        from privkit import experiments

        report["sweep"] = experiments.time_sweep(
            args.sweep, device=args.device, data_root=args.data_root, progress=not args.no_progress
        )
    print(bench.format_table(report))
    if args.json:
        bench.write_json(report, args.json)
    return 0


def _site(args: argparse.Namespace) -> int:
    from privkit import course

    executed = course.execute(
        out_dir=f"{args.out}/notebooks",
        solutions=not args.no_solutions,
        data_root=args.data_root,
        force=args.force,
    )
    print(f"course site: {course.build_site(executed, f'{args.out}/site')}")
    return 0


def _executor(ray_address: str | None) -> str | None:
    """``--ray`` as an executor name: None (local), ``"ray"`` or ``"ray:<address>"``."""
    if ray_address is None:
        return None
    return f"ray:{ray_address}" if ray_address else "ray"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "budget":
            return _budget(args)
        if args.command == "site":
            return _site(args)
        if args.command == "flower":
            return _flower(args)
        from privkit.experiments import reproduce

        reproduce(
            profile=args.profile,
            experiments_dir=args.experiments_dir,
            notebooks_dir=args.notebooks_dir,
            results_dir=args.results_dir,
            figures_dir=args.figures_dir,
            force=args.force,
            executor=_executor(args.ray),
        )
        return 0
    except (ValueError, FileNotFoundError, FileExistsError, LedgerError, UnitsFailedError) as err:
        print(f"privkit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
