"""Record privkit's accounting results as they are, for tests/test_accounting_fast.py.

Run from a checkout, ``python tests/data/record_accounting_reference.py``; it writes
``accounting_reference.json`` beside this file with the commit and package versions. The JSON
in the repository was recorded at commit dab6b09, before the fast accountant: the values that
Opacus's PRVAccountant (one fresh accountant per call) and the bisections of that time gave.
"""

from __future__ import annotations

import json
import subprocess
import time
import warnings
from importlib.metadata import version
from pathlib import Path

from privkit import accounting, individual

Q_PNEUMONIA, Q_MNIST = 256 / 4708, 256 / 60000
SIGMAS = (0.5, 0.8, 1.0, 1.5, 3.0, 8.0)
RATES = (Q_MNIST, Q_PNEUMONIA, 0.2, 1.0)
STEPS = (1, 18, 370, 2000)


def _epsilon(sigma: float, q: float, steps: int, delta: float, accountant: str) -> dict:
    row = dict(
        noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta, accountant=accountant
    )
    try:
        row["epsilon"] = accounting.epsilon(**row)
    except RuntimeError as error:  # "prv" refuses epsilon in the hundreds
        row["error"] = str(error)[:80]
    return row


def main() -> None:
    warnings.simplefilter("ignore")
    start = time.perf_counter()
    epsilons = [
        _epsilon(s, q, n, 1e-5, a)
        for a in ("prv", "rdp")
        for s in SIGMAS
        for q in RATES
        for n in STEPS
    ]
    epsilons += [
        _epsilon(s, q, n, d, a)
        for a in ("prv", "rdp")
        for d in (1e-6, 1e-3)
        for s in (0.8, 1.5)
        for q in (Q_PNEUMONIA, 0.2)
        for n in (18, 370)
    ]
    # Tutorial 01's curve: epsilon after each of 30 epochs of 18 steps, three noise levels.
    epsilons += [
        _epsilon(s, Q_PNEUMONIA, 18 * e, 1e-5, "prv") for s in (0.6, 1.0, 2.0) for e in range(1, 31)
    ]
    print(f"epsilons: {time.perf_counter() - start:.0f} s", flush=True)

    calibrations = []
    for accountant, tolerance, settings, targets in [
        (
            "prv",
            0.01,
            [(Q_PNEUMONIA, 370), (Q_PNEUMONIA, 54), (Q_MNIST, 14062), (0.1, 100)],
            (0.5, 1, 2, 4, 8),
        ),
        ("rdp", 0.01, [(Q_PNEUMONIA, 370), (0.1, 100)], (1, 4)),
        ("prv", 0.001, [(Q_PNEUMONIA, 370)], (1, 4)),
    ]:
        for q, steps in settings:
            for target in targets:
                sigma = accounting.calibrate_noise(
                    target_epsilon=float(target),
                    target_delta=1e-5,
                    sample_rate=q,
                    steps=steps,
                    accountant=accountant,
                    tolerance=tolerance,
                )
                calibrations.append(
                    dict(
                        target_epsilon=float(target),
                        target_delta=1e-5,
                        sample_rate=q,
                        steps=steps,
                        accountant=accountant,
                        tolerance=tolerance,
                        noise_multiplier=sigma,
                    )
                )
    print(f"calibrations: {time.perf_counter() - start:.0f} s", flush=True)

    compositions = []
    for mechanisms in [
        [(1.0, Q_PNEUMONIA, 370), (2.0, Q_PNEUMONIA, 370)],
        [(0.8, 0.2, 50), (1.5, Q_PNEUMONIA, 200), (3.0, 1.0, 5)],
        [(1.1, Q_MNIST, 14062), (1.0, Q_PNEUMONIA, 54)],
    ]:
        for accountant in ("prv", "rdp"):
            compositions.append(
                dict(
                    mechanisms=mechanisms,
                    delta=1e-5,
                    accountant=accountant,
                    epsilon=accounting.compose(mechanisms, delta=1e-5, accountant=accountant),
                )
            )
    print(f"compositions: {time.perf_counter() - start:.0f} s", flush=True)

    plans = []
    for group_epsilons, group_sizes, steps in [
        ({"strict": 1.0, "relaxed": 8.0}, {"strict": 1412, "relaxed": 3296}, 54),  # tutorial 03
        (
            {"strict": 1.0, "relaxed": 8.0},
            {"strict": 1883, "relaxed": 2825},
            180,
        ),  # privacy_budget, quick
        ({"a": 0.5, "b": 2.0, "c": 8.0}, {"a": 1000, "b": 2000, "c": 1708}, 180),
        (
            {"a": 0.5, "b": 1.0, "c": 2.0, "d": 4.0, "e": 8.0},
            {"a": 900, "b": 900, "c": 900, "d": 900, "e": 1108},
            540,
        ),
    ]:
        for accountant in ("prv", "rdp"):
            p = individual.plan(
                group_epsilons=group_epsilons,
                group_sizes=group_sizes,
                batch_size=256,
                steps=steps,
                delta=1e-5,
                accountant=accountant,
            )
            plans.append(
                dict(
                    group_epsilons=group_epsilons,
                    group_sizes=group_sizes,
                    batch_size=256,
                    steps=steps,
                    delta=1e-5,
                    accountant=accountant,
                    groups=list(p.groups),
                    sample_rates=list(p.sample_rates),
                    epsilons=list(p.epsilons),
                    noise_multiplier=p.noise_multiplier,
                )
            )
            print(
                f"plan {len(group_epsilons)} groups {accountant}: {time.perf_counter() - start:.0f} s",
                flush=True,
            )

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    record = dict(
        commit=commit,
        versions={p: version(p) for p in ("opacus", "numpy", "scipy")},
        epsilons=epsilons,
        calibrations=calibrations,
        compositions=compositions,
        plans=plans,
    )
    path = Path(__file__).with_name("accounting_reference.json")
    path.write_text(_dumps(record))
    print(f"wrote {path} in {time.perf_counter() - start:.0f} s")


def _dumps(record: dict) -> str:
    """JSON with one row per line, so that a change shows as a readable diff."""
    lines = []
    for key, value in record.items():
        if isinstance(value, list):
            rows = ",\n".join(f"  {json.dumps(row)}" for row in value)
            lines.append(f' "{key}": [\n{rows}\n ]')
        else:
            lines.append(f' "{key}": {json.dumps(value)}')
    return "{\n" + ",\n".join(lines) + "\n}\n"


if __name__ == "__main__":
    main()
