"""Randomness an attacker cannot know (issue "privacy that holds in practice", defects 2 and 3).

The attacker reads our code, our configuration and our results. With the noise and the Poisson
draws a function of the recorded seed, a replay of the run with and without a target record
tells membership with certainty; two runs that share their noise give away the clipped
gradient sum. Each test here plays that attacker against privkit's default.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from privkit import data, randomness
from privkit.engine.fast import FastStack
from privkit.experiments import epsilon_sweep
from privkit.train import TrainConfig, stream_identity, train, train_many

QUICK = dict(epochs=1, batch_size=32, lr=1.0, device="cpu", delta=1e-3)


@pytest.fixture(scope="module")
def pneumonia(synthetic_root: Path) -> data.Dataset:
    return data.load("pneumoniamnist", root=synthetic_root)


def _weights(result) -> torch.Tensor:
    return torch.nn.utils.parameters_to_vector(result.model.parameters()).detach()


@pytest.fixture
def noise_log(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, torch.Tensor]]:
    """Every noise draw of every fast stack, as the attacker would love to see it."""
    log: list[dict[str, torch.Tensor]] = []
    original = FastStack._noise

    def recording(self: FastStack) -> dict[str, torch.Tensor]:
        noise = original(self)
        log.append({k: v.clone() for k, v in noise.items()})
        return noise

    monkeypatch.setattr(FastStack, "_noise", recording)
    return log


def _per_model(log: list[dict[str, torch.Tensor]], k: int) -> torch.Tensor:
    """Model k's noise over all steps, standardised: (steps * parameters,)."""
    flat = torch.cat([torch.cat([v[k].flatten() for v in step.values()]) for step in log])
    return flat / flat.std()


def test_a_replay_of_the_recorded_configuration_does_not_match_the_release(
    pneumonia: data.Dataset,
) -> None:
    # The released run uses the default randomness; the attacker knows everything recorded
    # (the whole config, seed included) and the data, and replays it.
    config = TrainConfig(epsilon=1.0, seed=0, **QUICK)
    released = _weights(train(config, dataset=pneumonia, progress=False))
    replays = [
        _weights(train(config, dataset=pneumonia, progress=False)),  # the recorded configuration
        _weights(
            train(
                dataclasses.replace(config, randomness="seeded"), dataset=pneumonia, progress=False
            )
        ),
    ]
    for replay in replays:
        assert (replay - released).abs().max() > 1e-2  # nowhere near a match (a match is 0.0)


def test_two_runs_of_one_sweep_have_uncorrelated_noise(pneumonia, noise_log) -> None:
    # One seed, two epsilons: the sweep's two runs of seed 0, trained together in one stack.
    for mode in randomness.MODES:
        noise_log.clear()
        base = TrainConfig(noise_multiplier=1.0, epsilon=None, randomness=mode, **QUICK)
        configs = [
            dataclasses.replace(c, noise_multiplier=s) for c, s in zip([base, base], (1.0, 2.0))
        ]
        train_many(configs, dataset=pneumonia, progress=False)
        a, b = _per_model(noise_log, 0), _per_model(noise_log, 1)
        assert abs(float((a * b).mean())) < 5 / math.sqrt(len(a)), mode  # 5 standard errors
    sweep = epsilon_sweep(TrainConfig(randomness="seeded", **QUICK), epsilons=[1, 4], seeds=[0])
    ids = {randomness.stream_id(stream_identity(c)) for c in sweep}
    assert len(ids) == len(sweep) == 3  # epsilon 1, 4 and the non-private baseline


def test_equal_models_in_one_stack_draw_independent_noise(pneumonia, noise_log) -> None:
    config = TrainConfig(epsilon=2.0, **QUICK)  # secure: two identical configs, two streams
    train_many([config, config], dataset=pneumonia, progress=False)
    a, b = _per_model(noise_log, 0), _per_model(noise_log, 1)
    assert abs(float((a * b).mean())) < 5 / math.sqrt(len(a))
    seeded = dataclasses.replace(config, randomness="seeded")
    with pytest.raises(ValueError, match=r"configs\[0\] and configs\[1\] are the same seeded run"):
        train_many([seeded, seeded], dataset=pneumonia, progress=False)


def test_secure_seeds_come_from_the_os_and_seeded_streams_from_the_identity() -> None:
    draws = {randomness.seed_of(randomness="secure", identity={"seed": 0}) for _ in range(100)}
    assert len(draws) == 100 and max(draws) < 2**64
    identity = stream_identity(TrainConfig(randomness="seeded"))
    assert randomness.seed_of(randomness="seeded", identity=identity) == int(
        randomness.stream_id(identity)[:16], 16
    )
    other = stream_identity(TrainConfig(randomness="seeded", epsilon=4.0))
    assert randomness.stream_id(identity) != randomness.stream_id(other)
    where = stream_identity(TrainConfig(randomness="seeded", device="cpu", data_root="/elsewhere"))
    assert randomness.stream_id(identity) == randomness.stream_id(
        where
    )  # where it runs is not who it is
    a = randomness.numpy_generator(randomness="secure", identity={}).random(4)
    b = randomness.numpy_generator(randomness="secure", identity={}).random(4)
    assert not np.array_equal(a, b)
    assert randomness.ledger_tag(randomness="seeded", identity=identity).startswith("seeded:")
    with pytest.raises(ValueError, match=r"randomness='csprng'.*secure, seeded"):
        randomness.seed_of(randomness="csprng", identity={})
