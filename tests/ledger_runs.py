"""The one run the ledger tests charge again and again, and how they charge it."""

from __future__ import annotations

import math

from privkit.accounting import epsilon
from privkit.budget import Ledger
from privkit.mechanism import Mechanism

RUN = dict(noise_multiplier=1.0, sample_rate=0.05, steps=50, delta=1e-5)  # epsilon ~2.68


def eps_of(k: int, delta: float = 1e-5, accountant: str = "prv") -> float:
    """Epsilon of k runs of RUN, from the accountant run once for k times the steps."""
    return epsilon(
        noise_multiplier=1.0, sample_rate=0.05, steps=50 * k, delta=delta, accountant=accountant
    )


def run(**overrides) -> Mechanism:
    """RUN as the ledger receives it; the ledger computes its epsilon (NaN here) itself."""
    return Mechanism(
        **{"max_grad_norm": 1.0, "accountant": "prv", "epsilon": math.nan, **RUN, **overrides}
    )


def charge(
    ledger: Ledger,
    *scopes: str,
    run_id: str = "run",
    actor: str = "tester",
    randomness: str = "secure",
    allow_seeded: bool = False,
    **mechanism,
):
    """Charge RUN (with ``mechanism``'s fields changed) to ``scopes``."""
    return ledger.charge(
        list(scopes),
        run(**mechanism),
        run_id=run_id,
        actor=actor,
        randomness=randomness,
        allow_seeded=allow_seeded,
    )
