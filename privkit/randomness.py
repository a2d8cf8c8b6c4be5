"""Where a private mechanism's randomness comes from: the operating system, or a recorded seed.

A DP guarantee holds only while the noise and the Poisson draws are unknown to the attacker,
who may read our code, our configurations and our results. A run whose noise is a function of
its recorded seed can be replayed: train once with the target record and once without, under
the same seed, and whichever replay equals the released model tells membership with certainty,
whatever epsilon the accountant reports. Two runs that share a noise stream leak the clipped
gradient sum from their difference, and do not compose as independent mechanisms.

Two modes, named in every result and every ledger spend:

* ``"secure"`` (the default, and what a ledger accepts): every generator is seeded with 64
  bits from the operating system's CSPRNG (:mod:`secrets`), drawn afresh for each run, model
  and hospital, and never recorded. Opacus's ``secure_mode`` goes further (a CSPRNG for every
  draw, against an attacker who reads the generator's outputs); here the attacker sees only
  trained weights, and recovering the seed means replaying training 2^63 times on average.
* ``"seeded"``: research on public benchmark data, where results should repeat bit for bit.
  Each stream is derived from the run's *identity* (every parameter that defines the run,
  epsilon and seed included, plus the stream's own name) by SHA-256, so two runs of a sweep,
  two models of a stack and two hospitals never share a stream; but anyone who reads the
  configuration can replay it. A ledger refuses such a run unless the caller says so, and
  records it (:meth:`privkit.budget.Ledger.charge`, ``allow_seeded``).

Initialisation is not part of the mechanism (DP-SGD's guarantee holds for a public starting
point), so models are initialised from ``seed`` in both modes.

>>> a = stream_id({"epsilon": 1.0, "seed": 0})
>>> a == stream_id({"seed": 0, "epsilon": 1.0}), a == stream_id({"epsilon": 4.0, "seed": 0})
(True, False)
>>> ledger_tag(randomness="secure", identity={"seed": 0})
'secure'
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from privkit import _validate

MODES: tuple[str, ...] = ("secure", "seeded")


def stream_id(identity: Mapping[str, Any]) -> str:
    """The name of a seeded stream: SHA-256 of the identity's canonical JSON (sorted keys)."""
    text = json.dumps(dict(identity), sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def seed_of(*, randomness: str, identity: Mapping[str, Any]) -> int:
    """A 64-bit seed: fresh from the OS (``secure``) or derived from ``identity`` (``seeded``)."""
    _validate.one_of(MODES, randomness=randomness)
    if randomness == "secure":
        return secrets.randbits(64)
    return int(stream_id(identity)[:16], 16)


def torch_generator(
    *, randomness: str, identity: Mapping[str, Any], device: torch.device | str = "cpu"
) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` for one stream (noise and Poisson draws of one model)."""
    seed = seed_of(randomness=randomness, identity=identity)
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


def numpy_generator(*, randomness: str, identity: Mapping[str, Any]) -> np.random.Generator:
    """A NumPy generator for one stream; ``secure`` seeds it with 128 bits of OS entropy."""
    _validate.one_of(MODES, randomness=randomness)
    if randomness == "secure":
        return np.random.default_rng(secrets.randbits(128))
    return np.random.default_rng(int(stream_id(identity), 16))


def ledger_tag(*, randomness: str, identity: Mapping[str, Any]) -> str:
    """What a ledger records of a run's randomness: ``secure``, or ``seeded:<stream id>``."""
    _validate.one_of(MODES, randomness=randomness)
    return "secure" if randomness == "secure" else f"seeded:{stream_id(identity)}"
