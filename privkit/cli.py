"""The ``privkit`` command: train one model, or reproduce every figure.

    privkit train --dataset pneumoniamnist --model cnn --epsilon 8 --epochs 10
    privkit train --epsilon inf                # the non-private baseline
    privkit reproduce --profile quick
    privkit bench --json bench.json            # epoch times of every engine on this device
    privkit budget set --scope dataset:pneumoniamnist --epsilon 4 --delta 1e-5
    privkit budget show                        # budgets, spent epsilon (composed and summed)
    privkit flower certs --out certs --host coordinator.example.org   # a CA and the SuperLink's TLS files
    privkit flower key --out keys --name hospital-a                    # a SuperNode's authentication keys
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence

from privkit import accounting, budget, data
from privkit.budget import LedgerError
from privkit.engine import DP_BACKENDS
from privkit.models import MODELS
from privkit.train import TrainConfig


def _float(text: str) -> float:
    """Floats including ``inf``; argparse's ``float`` type already accepts it, this names it."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'inf', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="privkit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    d = TrainConfig()
    t = commands.add_parser("train", help="train one model with DP-SGD and print its result",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--dataset", default=d.dataset, choices=data.DATASETS)
    t.add_argument("--model", default=d.model, choices=sorted(MODELS))
    t.add_argument("--backend", default=d.backend, choices=DP_BACKENDS)
    t.add_argument("--epsilon", type=_float, default=d.epsilon, help="target epsilon; 'inf' trains without privacy")
    t.add_argument("--noise-multiplier", type=_float, default=None, help="fix the noise instead of --epsilon")
    t.add_argument("--delta", type=_float, default=d.delta)
    t.add_argument("--max-grad-norm", type=_float, default=d.max_grad_norm, help="per-sample clipping norm C")
    t.add_argument("--epochs", type=int, default=d.epochs)
    t.add_argument("--batch-size", type=int, default=d.batch_size, help="expected Poisson batch size")
    t.add_argument("--lr", type=_float, default=d.lr)
    t.add_argument("--momentum", type=_float, default=d.momentum)
    t.add_argument("--ema", type=_float, default=d.ema, help="decay of a moving average of the parameters (0: off)")
    t.add_argument("--accountant", default=d.accountant, choices=accounting.ACCOUNTANTS)
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1, ...")
    t.add_argument("--data-root", default=None, help="folder with <dataset>.npz (default: $PRIVKIT_DATA, else medmnist's)")
    t.add_argument("--out", default=None, help="append the result to <out>/metrics.csv (reused if finished)")
    t.add_argument("--experiment", default="cli", help="experiment name recorded in the table")
    t.add_argument("--ledger", default=None,
                   help="privacy-budget ledger to charge before any data are read (default: $PRIVKIT_LEDGER if set)")
    t.add_argument("--no-progress", action="store_true")

    b = commands.add_parser("bench", help="time every training engine on one device (a benchmark)",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    b.add_argument("--model", default="cnn", choices=sorted(MODELS))
    b.add_argument("--batch-size", type=int, default=256)
    b.add_argument("--epochs", type=int, default=2, help="timed epochs per row, after one warm-up epoch")
    b.add_argument("--stacks", type=int, nargs="*", default=[8, 32], help="K of the fast-stack-K rows")
    b.add_argument("--data-root", default=None, help="folder with pneumoniamnist.npz (else random data of its size)")
    b.add_argument("--json", default=None, help="also write the report as JSON here")
    b.add_argument("--sweep", default=None, metavar="YAML",
                   help="also time this experiment's full epsilon sweep, e.g. experiments/privacy_utility.yaml")
    b.add_argument("--no-progress", action="store_true")

    r = commands.add_parser("reproduce", help="execute every experiment notebook (what `make reproduce` does)")
    r.add_argument("--profile", default="full", help="full (GPU) or quick (CPU), as defined in experiments/*.yaml")
    r.add_argument("--force", action="store_true", help="re-execute notebooks that are up to date")
    r.add_argument("--experiments-dir", default="experiments")
    r.add_argument("--notebooks-dir", default="notebooks")
    r.add_argument("--results-dir", default="results")
    r.add_argument("--figures-dir", default="figures")
    _add_budget_parser(commands)
    _add_flower_parser(commands)
    return parser


def _add_flower_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("flower", help="credentials for a Flower federation (privkit.federated.flower)")
    sub = p.add_subparsers(dest="flower_command", required=True)
    c = sub.add_parser("certs", help="the coordinator: a CA and the SuperLink's TLS certificate and key")
    c.add_argument("--out", required=True, help="folder for ca.crt, ca.key, superlink.crt, superlink.key")
    c.add_argument("--host", required=True, action="append",
                   help="a name or IP address by which the hospitals reach the SuperLink; repeat for several")
    c.add_argument("--days", type=int, default=365, help="validity of the certificates")
    k = sub.add_parser("key", help="a hospital: its SuperNode's authentication key pair (send only the .pub)")
    k.add_argument("--out", required=True, help="folder for <name> (private) and <name>.pub")
    k.add_argument("--name", required=True, help="the hospital's institution id, e.g. hospital-a")


def _flower(args: argparse.Namespace) -> int:
    from privkit.federated import credentials

    if args.flower_command == "certs":
        made = credentials.make_certificates(args.out, hosts=args.host, days=args.days)
        print(f"CA: {made.ca_certificate} (give it to every hospital; keep {made.ca_key} offline)")
        print(f"SuperLink: --ssl-ca-certfile {made.ca_certificate} --ssl-certfile {made.superlink_certificate}"
              f" --ssl-keyfile {made.superlink_key}")
    else:
        private, public = credentials.make_supernode_key(args.out, name=args.name)
        print(f"SuperNode: --auth-supernode-private-key {private} (stays at the hospital)\n"
              f"Coordinator: flwr supernode register {public.name} <superlink> --name {args.name}")
    return 0


def _add_budget_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("budget", help="privacy budgets: set them, show what was spent, list the spends")
    sub = p.add_subparsers(dest="budget_command", required=True)
    ledger = argparse.ArgumentParser(add_help=False)
    ledger.add_argument("--ledger", default=None, metavar="PATH",
                        help="ledger file (default: $PRIVKIT_LEDGER, else $XDG_DATA_HOME/privkit/ledger.sqlite)")
    scope_help = "dataset:<name>[/institution:<id>][/group:<id>]"
    s = sub.add_parser("set", parents=[ledger], help="set or change the budget of a scope")
    s.add_argument("--scope", required=True, help=scope_help)
    s.add_argument("--epsilon", type=_float, required=True)
    s.add_argument("--delta", type=_float, required=True)
    for name, what in (("show", "budgets, spent epsilon (composed and summed) and remaining, per scope"),
                       ("history", "every spend, in time order")):
        sub.add_parser(name, parents=[ledger], help=what).add_argument(
            "--scope", default=None, help=f"only this scope and what lies in it: {scope_help}")
    c = sub.add_parser("charge", parents=[ledger], help="record a run's spend by hand, or refuse it (exit 2)")
    c.add_argument("--scope", required=True, action="append", help=f"{scope_help}; repeat for several")
    c.add_argument("--noise-multiplier", type=_float, required=True)
    c.add_argument("--sample-rate", type=_float, required=True)
    c.add_argument("--steps", type=int, required=True)
    c.add_argument("--delta", type=_float, required=True)
    c.add_argument("--run-id", required=True)
    c.add_argument("--actor", default=None, help="who runs it (default: user@host)")
    c.add_argument("--accountant", default="prv", choices=("prv", "rdp"))


def _budget(args: argparse.Namespace) -> int:
    import pandas as pd

    from privkit import budget

    ledger = budget.Ledger(args.ledger, read_only=args.budget_command in ("show", "history"))  # never creates
    if args.budget_command == "set":
        b = ledger.set_budget(args.scope, epsilon=args.epsilon, delta=args.delta)
        print(f"{b.scope}: budget epsilon={b.epsilon:g}, delta={b.delta:g} (set {b.time} by {b.actor}; {ledger.path})")
    elif args.budget_command == "show":
        table = ledger.show(args.scope)
        num = lambda fmt: lambda x: "-" if pd.isna(x) else format(x, fmt)  # noqa: E731
        print(pd.DataFrame({
            "scope": table["scope"],
            "budget": [f"eps={e:g} delta={d:g}" if e == e else "no budget"
                       for e, d in zip(table["budget_epsilon"], table["budget_delta"])],
            "spent (composed)": table["spent_epsilon_composed"].map(num(".3f")),
            "delta": table["spent_delta"].map(num("g")),
            "spent (sum)": table["spent_epsilon_sum"].map(num(".3f")),
            "sum of deltas": table["spent_delta_sum"].map(num("g")),
            "remaining": table["remaining"].map(num(".3f")),
            "spends": table["n_spends"],
        }).to_string(index=False) if len(table) else "No budgets or spends yet.")
        print(f"({ledger.path}; spent for the worst-off patient of each scope. composed: all spends composed by "
              "the accountant, at the budget's delta; sum: the runs' own epsilons added, at their deltas added)")
    elif args.budget_command == "history":
        rows = [{"id": s.id, "time": s.time[:19], "scopes": ",".join(s.scopes), "run_id": s.run_id,
                 "actor": s.actor, "noise": s.noise_multiplier, "sample_rate": f"{s.sample_rate:.4g}",
                 "steps": s.steps, "delta": f"{s.delta:g}", "epsilon": f"{s.epsilon:.3f}"}
                for s in ledger.history(args.scope)]  # fmt: skip
        print(pd.DataFrame(rows).to_string(index=False) if rows else "No spends yet.")
    else:
        s = ledger.charge(args.scope, noise_multiplier=args.noise_multiplier, sample_rate=args.sample_rate,
                          steps=args.steps, delta=args.delta, run_id=args.run_id,
                          actor=args.actor or budget.default_actor(), accountant=args.accountant)  # fmt: skip
        print(f"charged spend {s.id}: epsilon={s.epsilon:.3f} at delta={s.delta:g} on {', '.join(s.scopes)}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from privkit import experiments
    from privkit.train import train

    config = TrainConfig(
        dataset=args.dataset, model=args.model, backend=args.backend,
        epsilon=None if args.noise_multiplier is not None else args.epsilon,
        noise_multiplier=args.noise_multiplier, delta=args.delta,
        max_grad_norm=args.max_grad_norm, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, momentum=args.momentum, ema=args.ema, accountant=args.accountant, seed=args.seed,
        device=args.device, data_root=args.data_root,
    )  # fmt: skip
    path = args.ledger or os.environ.get("PRIVKIT_LEDGER")
    ledger = budget.Ledger(path) if path else None
    if args.out:
        table = experiments.sweep([config], experiment=args.experiment, out_dir=args.out,
                                  ledger=ledger, progress=not args.no_progress)  # fmt: skip
        summary = {
            "run_id": table["run_id"].iloc[0],
            "epsilon_spent": float(table["epsilon_spent"].iloc[0]),
            "noise_multiplier": float(table["noise_multiplier"].iloc[0]),
            "metrics": {f"{r.split}_{r.metric}": r.value for r in table.itertuples()},
            "table": f"{args.out}/metrics.csv",
        }
    else:
        result = train(config, ledger=ledger, progress=not args.no_progress)
        m = result.mechanism
        summary = {
            "backend": result.backend, "device": result.device,
            "epsilon_spent": m.epsilon, "delta": m.delta, "noise_multiplier": m.noise_multiplier,
            "sample_rate": m.sample_rate, "steps": m.steps, "seconds": round(result.seconds, 2),
            "metrics": {f"{s}_{k}": v for s, vals in result.metrics.items() for k, v in vals.items()},
        }  # fmt: skip
    print(json.dumps(summary, indent=2, default=lambda x: "inf" if x == math.inf else str(x)))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from privkit import bench

    report = bench.run(
        device=args.device, model=args.model, data_root=args.data_root, batch_size=args.batch_size,
        epochs=args.epochs, stacks=args.stacks, progress=not args.no_progress,
    )  # fmt: skip
    if args.sweep:
        report["sweep"] = bench.time_sweep(args.sweep, device=args.device, data_root=args.data_root,
                                           progress=not args.no_progress)  # fmt: skip
    print(bench.format_table(report))
    if args.json:
        bench.write_json(report, args.json)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "budget":
            return _budget(args)
        if args.command == "flower":
            return _flower(args)
        from privkit.experiments import reproduce

        reproduce(
            profile=args.profile, experiments_dir=args.experiments_dir,
            notebooks_dir=args.notebooks_dir, results_dir=args.results_dir,
            figures_dir=args.figures_dir, force=args.force,
        )  # fmt: skip
        return 0
    except (ValueError, FileNotFoundError, FileExistsError, LedgerError) as err:
        print(f"privkit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
