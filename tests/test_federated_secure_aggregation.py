"""Secure aggregation (Bonawitz et al. 2017): the revealed sum is exact, drop-outs of up to n - t
sites still give it and more give none, and a server with everything it legitimately sees (alone,
with t - 1 colluding sites, or replaying the run's configuration) recovers no single update.

Each attack is also run with the one secret it lacks handed to it, and then recovers the update
exactly: so a failed attack fails for want of that secret, not for a bug in the attack."""

from __future__ import annotations

import hashlib
import hmac
import random
from collections.abc import Collection
from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from scipy import stats
from synthetic import write_medmnist_npz

from privkit import data
from privkit.federated import secure_aggregation as sa
from privkit.federated import shamir
from privkit.federated.algorithms import FederatedConfig, train_federated
from privkit.federated.sites import split_sites

NAMES = ["h1", "h2", "h3", "h4", "h5"]
T = 3  # a majority of 5
LENGTH = 20_000


def updates(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.normal(0, 1, LENGTH) * 10.0 ** rng.integers(-6, 3) for n in NAMES}


def masked_round(values: dict[str, np.ndarray], threshold: int = T) -> tuple[dict, sa.Server, dict]:
    """Rounds 0-2 with every site: the clients, the server, and every site's masked input (the
    caller decides whose arrive)."""
    clients = {n: sa.Client(n) for n in values}
    server = sa.Server(threshold=threshold)
    roster = server.advertise_keys({n: c.advertise_keys() for n, c in clients.items()})
    inbox = server.share_keys(
        {n: c.share_keys(roster, threshold=threshold) for n, c in clients.items()}
    )
    return clients, server, {n: c.masked_input(values[n], inbox[n]) for n, c in clients.items()}


def finish(
    clients: dict, server: sa.Server, masked: dict, dropped: Collection[str] = ()
) -> np.ndarray:
    survivors = server.masked_input({n: m for n, m in masked.items() if n not in dropped})
    return server.unmasking({n: clients[n].unmasking(survivors) for n in sorted(survivors)})


def pad(own: str, other: str, seed: bytes) -> np.ndarray:
    """The pairwise mask as site ``own`` added it (written out here, independent of the module)."""
    stream = np.frombuffer(hashlib.shake_256(seed).digest(8 * LENGTH), dtype="<u8").astype(
        np.uint64
    )
    return stream if own < other else np.uint64(0) - stream


def assert_uniform_and_unrelated(ring: np.ndarray, update: np.ndarray) -> None:
    """Ring elements that look uniform (top and low bits) and are uncorrelated with ``update``.

    The masks are fresh in every run, so the thresholds leave a false alarm about once in 10^6;
    a structured input fails them with p < 1e-10 (see the uniformity test)."""
    top = (ring >> np.uint64(60)).astype(np.int64)
    assert stats.chisquare(np.bincount(top, minlength=16)).pvalue > 1e-6
    low = (ring & np.uint64(63)).astype(np.int64)
    assert stats.chisquare(np.bincount(low, minlength=64)).pvalue > 1e-6
    assert abs(stats.pearsonr(ring.astype(np.float64), update).statistic) < 0.05
    assert np.abs(sa.decode(ring) - update).min() > 1e-3  # no coordinate comes out


def test_the_sum_is_exact_up_to_fixed_point() -> None:
    values = updates()
    revealed = finish(*masked_round(values))
    plain = np.sum(list(values.values()), axis=0)
    assert np.abs(revealed - plain).max() <= len(NAMES) * 0.5 * 2.0**-sa.FRACTION_BITS
    # The masks cancel exactly: the revealed sum is the sum of the encoded values, bit for bit.
    encoded = sum(
        (sa.encode(v, max_abs=2.0**20) for v in values.values()), np.zeros(LENGTH, np.uint64)
    )
    assert np.array_equal(revealed, sa.decode(encoded))


@pytest.mark.parametrize("dropped", [["h2"], ["h1", "h5"]])  # up to n - t = 2
def test_dropouts_give_the_exact_sum_of_the_survivors(dropped: list[str]) -> None:
    values = updates(1)
    plain = sum(sa.encode(v, max_abs=2.0**20) for n, v in values.items() if n not in dropped)
    assert np.array_equal(finish(*masked_round(values), dropped=dropped), sa.decode(plain))
    assert np.array_equal(sa.secure_sum(values, dropouts=dropped), sa.decode(plain))


def test_a_survivor_silent_in_the_unmasking_round_changes_nothing() -> None:
    values = updates(2)
    clients, server, masked = masked_round(values)
    survivors = server.masked_input({n: masked[n] for n in NAMES if n != "h4"})
    answers = {
        n: clients[n].unmasking(survivors) for n in ["h1", "h3", "h5"]
    }  # h2 is silent: t answers
    plain = sum(sa.encode(values[n], max_abs=2.0**20) for n in survivors)
    assert np.array_equal(server.unmasking(answers), sa.decode(plain))


def test_fewer_than_t_sites_left_refuse_the_round_at_every_step() -> None:
    values = updates(3)
    with pytest.raises(
        sa.DropoutError, match="Only 2 of 5 sites sent their masked input; at least 3"
    ):
        sa.secure_sum(values, dropouts=["h1", "h2", "h3"])
    clients = {n: sa.Client(n) for n in NAMES}
    with pytest.raises(sa.DropoutError, match="Only 2 sites sent keys"):
        sa.Server(threshold=T).advertise_keys({n: clients[n].advertise_keys() for n in NAMES[:2]})
    clients, server, masked = masked_round(values)
    survivors = server.masked_input(masked)
    with pytest.raises(sa.DropoutError, match="Only 2 of 5 sites sent their unmasking answer"):
        server.unmasking({n: clients[n].unmasking(survivors) for n in NAMES[:2]})
    fresh, _, _ = masked_round(values)
    with pytest.raises(sa.DropoutError, match="h1: 2 survivors are fewer than the threshold 3"):
        fresh["h1"].unmasking({"h1", "h2"})  # a site refuses a survivor set below t


def test_the_threshold_is_a_majority() -> None:
    with pytest.raises(ValueError, match=r"Expected threshold=2 to be an integer in \[3, 5\]"):
        sa.secure_sum(updates(), threshold=2)
    with pytest.raises(ValueError, match=r"threshold=6 to be an integer in \[3, 5\]"):
        sa.secure_sum(updates(), threshold=6)
    with pytest.raises(ValueError, match="at least 2 sites, got 1: one update alone cannot hide"):
        sa.secure_sum({"h1": np.zeros(3)})
    with pytest.raises(ValueError, match=r"dropouts names unknown site\(s\) \['h9'\]"):
        sa.secure_sum(updates(), dropouts=["h9"])
    client = sa.Client("h1")  # a site checks the threshold itself
    roster = {
        "h1": client.advertise_keys(),
        **{n: sa.Client(n).advertise_keys() for n in NAMES[1:]},
    }
    with pytest.raises(ValueError, match=r"threshold=1 to be an integer in \[3, 5\]"):
        client.share_keys(roster, threshold=1)


def test_values_beyond_the_fixed_point_range_are_refused_not_wrapped() -> None:
    with pytest.raises(ValueError, match=r"Expected finite values with \|x\| <= max_abs=1024"):
        sa.secure_sum({"a": np.array([0.0, 2000.0]), "b": np.zeros(2)}, max_abs=1024)
    with pytest.raises(ValueError, match="finite values"):
        sa.secure_sum({"a": np.array([np.nan]), "b": np.zeros(1)})
    with pytest.raises(ValueError, match=r"max_abs=1e\+18 is too large for 2 sites"):
        sa.secure_sum({"a": np.zeros(1), "b": np.zeros(1)}, max_abs=1e18)


def test_key_agreement_matches_rfc_7748_and_rfc_5869() -> None:
    """Both ends derive the same seed, that of X25519 (RFC 7748, section 6.1) and HKDF-SHA256
    (RFC 5869: no salt means a zero salt) written out with hmac."""
    alice = X25519PrivateKey.from_private_bytes(
        bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    )
    bob = X25519PrivateKey.from_private_bytes(
        bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    )
    alice_public = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    bob_public = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    prk = hmac.new(bytes(32), shared, hashlib.sha256).digest()
    expected = hmac.new(prk, sa.MASK + b"\x01", hashlib.sha256).digest()
    assert sa.agree(alice, bob_public, purpose=sa.MASK) == expected
    assert sa.agree(bob, alice_public, purpose=sa.MASK) == expected
    assert sa.agree(alice, bob_public, purpose=sa.CHANNEL) != expected  # one key per purpose
    assert sa.agree(X25519PrivateKey.generate(), bob_public, purpose=sa.MASK) != expected


def test_a_tampered_redirected_or_reflected_share_is_rejected() -> None:
    clients = {n: sa.Client(n) for n in NAMES}
    server = sa.Server(threshold=T)
    roster = server.advertise_keys({n: c.advertise_keys() for n, c in clients.items()})
    inbox = server.share_keys({n: c.share_keys(roster, threshold=T) for n, c in clients.items()})
    sent = server.ciphertexts
    tampered = {**inbox["h2"], "h1": sent["h1"]["h2"][:-1] + bytes([sent["h1"]["h2"][-1] ^ 1])}
    redirected = {**inbox["h3"], "h1": sent["h1"]["h2"]}  # h1's shares for h2, sent to h3
    reflected = {**inbox["h1"], "h2": sent["h1"]["h2"]}  # h1's own message back, as if from h2
    for name, box in (("h2", tampered), ("h3", redirected), ("h1", reflected)):
        with pytest.raises(
            sa.ProtocolError, match=f"{name}: the shares from h. fail authentication"
        ):
            clients[name].masked_input(np.zeros(LENGTH), box)
    assert (
        len(clients["h4"].masked_input(np.zeros(LENGTH), inbox["h4"])) == LENGTH
    )  # untouched: accepted


def test_answers_that_break_the_protocol_are_refused() -> None:
    values = updates(9)
    clients, server, masked = masked_round(values)
    survivors = server.masked_input({n: masked[n] for n in NAMES if n != "h5"})
    answers = {n: clients[n].unmasking(survivors) for n in ["h1", "h2", "h3"]}
    first = answers["h1"]
    both = sa.Unmasking(
        first.self_mask, {**first.mask_key, "h2": first.self_mask["h2"]}
    )  # both kinds for h2
    with pytest.raises(sa.ProtocolError, match="h1's answer does not match the survivors"):
        server.unmasking({**answers, "h1": both})
    # Shift h1's share of h5's mask key by 1 / L_1(0): the shares then rebuild s_sk + 1 (Lagrange).
    xs = [a.mask_key["h5"][0] for a in answers.values()]
    basis = 1
    for x in xs[1:]:
        basis = basis * x * pow(x - xs[0], -1, shamir.PRIME) % shamir.PRIME
    x, y = first.mask_key["h5"]
    shifted = sa.Unmasking(
        first.self_mask, {"h5": (x, (y + pow(basis, -1, shamir.PRIME)) % shamir.PRIME)}
    )
    with pytest.raises(sa.ProtocolError, match="h5's mask key rebuild a key it did not advertise"):
        server.unmasking({**answers, "h1": shifted})
    plain = sum(sa.encode(values[n], max_abs=2.0**20) for n in survivors)
    assert np.array_equal(
        server.unmasking(answers), sa.decode(plain)
    )  # the true answers still work


def test_the_rounds_run_once_each_in_order() -> None:
    client = sa.Client("h1")
    with pytest.raises(sa.ProtocolError, match="h1: masked_input out of order"):
        client.masked_input(np.zeros(3), {})
    client.advertise_keys()
    with pytest.raises(sa.ProtocolError, match="advertise_keys out of order"):
        client.advertise_keys()
    others = {n: sa.Client(n).advertise_keys() for n in NAMES[1:]}
    with pytest.raises(sa.ProtocolError, match="does not hold the keys this site advertised"):
        client.share_keys({"h1": others["h2"], **others}, threshold=T)


def test_a_masked_input_is_uniform_and_fresh_in_every_run_whatever_the_seeds() -> None:
    update = np.linspace(-1, 1, 100_000)  # a strongly structured update
    values = {n: update for n in NAMES}
    runs = []
    for _ in range(2):  # seed every generator an attacker could know: the masks do not follow
        random.seed(0), np.random.seed(0), torch.manual_seed(0)
        clients, server, masked = masked_round(values)
        runs.append((server.roster["h3"], masked["h3"]))
    assert_uniform_and_unrelated(runs[0][1], update)
    assert runs[0][0] != runs[1][0]  # fresh keys
    replayed_mask = runs[1][1] - sa.encode(update, max_abs=2.0)
    assert_uniform_and_unrelated(
        runs[0][1] - replayed_mask, update
    )  # one run's mask opens no other
    # Without masks the same update is far from uniform: the test could fail.
    plain = (sa.encode(update, max_abs=2.0) >> np.uint64(60)).astype(np.int64)
    assert stats.chisquare(np.bincount(plain, minlength=16)).pvalue < 1e-10


def test_the_server_cannot_unmask_a_single_input_with_what_it_sees() -> None:
    values = updates(4)
    clients, server, masked = masked_round(values)
    finish(clients, server, masked)
    # The server legitimately rebuilds every survivor's self-mask seed b_i ...
    b = {
        n: shamir.combine([a.self_mask[n] for a in server.answers.values()], length=32)
        for n in NAMES
    }
    assert all(
        not a.mask_key for a in server.answers.values()
    )  # ... and holds no share of any s_sk_i
    residual = server.masked["h1"] - sa.prg(b["h1"], LENGTH)  # still x + pairwise masks
    assert_uniform_and_unrelated(residual, values["h1"])
    # Given the pairwise seeds that only the sites hold, the same attack would succeed.
    for other in NAMES[1:]:
        seed = sa.agree(clients["h1"]._mask_key, server.roster[other].mask, purpose=sa.MASK)
        residual = residual - pad("h1", other, seed)
    np.testing.assert_allclose(sa.decode(residual), values["h1"], atol=2.0**-32)


def test_a_late_input_of_a_dropped_site_stays_masked() -> None:
    values = updates(5)
    clients, server, masked = masked_round(values)
    finish(clients, server, masked, dropped=["h2"])
    late = masked["h2"]  # arrives after the server announced the survivors
    assert all("h2" not in a.self_mask for a in server.answers.values())
    # The server rebuilds h2's mask key and removes all of h2's pairwise masks ...
    key = shamir.combine([a.mask_key["h2"] for a in server.answers.values()], length=32)
    mask_key = X25519PrivateKey.from_private_bytes(key)
    for other in set(NAMES) - {"h2"}:
        late = late - pad(
            "h2", other, sa.agree(mask_key, server.roster[other].mask, purpose=sa.MASK)
        )
    assert_uniform_and_unrelated(late, values["h2"])  # ... but the self-mask hides the update
    unmasked = late - sa.prg(clients["h2"]._self_seed, LENGTH)  # with b_2, which it never gets
    np.testing.assert_allclose(sa.decode(unmasked), values["h2"], atol=2.0**-32)


def test_a_second_survivor_set_is_refused() -> None:
    values = updates(6)
    clients, server, masked = masked_round(values)
    finish(clients, server, masked)  # every site survived: the server holds shares of every b_i
    for name in NAMES[1:]:  # now it claims h1 dropped, to get the shares of h1's mask key too
        with pytest.raises(
            sa.ProtocolError, match=f"{name} already answered .* nothing for a second set"
        ):
            clients[name].unmasking(set(NAMES) - {"h1"})


def test_a_server_that_tells_two_stories_gets_too_few_shares() -> None:
    """With t > n/2, telling some sites h1 survived and the others it dropped yields t shares of
    one of h1's masks at most."""
    values = updates(7)
    clients, server, masked = masked_round(values)
    server.masked_input(masked)
    alive = {n: clients[n].unmasking(NAMES) for n in ["h1", "h2", "h3"]}
    gone = {n: clients[n].unmasking(["h3", "h4", "h5"]) for n in ["h4", "h5"]}
    assert (
        shamir.combine([a.self_mask["h1"] for a in alive.values()], length=32)
        == clients["h1"]._self_seed
    )
    with pytest.raises(ValueError, match="2 shares do not reconstruct"):
        shamir.combine([a.mask_key["h1"] for a in gone.values()], length=32)
    with pytest.raises(sa.ProtocolError, match="h3 already answered"):
        clients["h3"].unmasking(["h3", "h4", "h5"])


def test_the_server_and_t_minus_1_colluding_sites_learn_no_honest_update() -> None:
    values = updates(8)
    clients, server, masked = masked_round(values)
    finish(clients, server, masked)
    colluders = ["h4", "h5"]  # hand over every share they hold and their own keys
    with pytest.raises(ValueError, match="do not reconstruct"):
        shamir.combine([clients[c]._held["h1"][0] for c in colluders], length=32)
    b1 = shamir.combine([a.self_mask["h1"] for a in server.answers.values()], length=32)
    residual = server.masked["h1"] - sa.prg(b1, LENGTH)

    def seed_with(site: str) -> bytes:  # s_(h1, site), as ``site`` derives it
        return sa.agree(clients[site]._mask_key, server.roster["h1"].mask, purpose=sa.MASK)

    for c in colluders:
        residual = residual - pad("h1", c, seed_with(c))
    assert_uniform_and_unrelated(residual, values["h1"])  # the masks with h2 and h3 remain
    for honest in ["h2", "h3"]:  # the seeds only honest sites hold would unmask it
        residual = residual - pad("h1", honest, seed_with(honest))
    np.testing.assert_allclose(sa.decode(residual), values["h1"], atol=2.0**-32)


def test_replaying_the_recorded_configuration_rebuilds_no_mask(tmp_path: Path, monkeypatch) -> None:
    """The attack on main: the server knows config.seed, replays the run, and subtracts the masks
    of its replay from what it received (this recovered every update to 1e-10)."""
    write_medmnist_npz(tmp_path / "pneumoniamnist.npz", sizes=(96, 16, 16))
    dataset = data.load("pneumoniamnist", root=tmp_path)
    sites = split_sites(dataset.train, n_sites=3, seed=0)
    seen = []
    real = sa.Client.masked_input

    def spy(self, update, inbox, **kw):
        out = real(self, update, inbox, **kw)
        seen.append((np.array(update), out))
        return out

    monkeypatch.setattr(sa.Client, "masked_input", spy)
    config = FederatedConfig(rounds=2, batch_size=16, secure_aggregation=True, seed=0)
    for _ in range(2):
        train_federated(config, sites, evaluation=dataset, progress=False)
    assert len(seen) == 2 * 2 * 3
    received, replay = seen[:6], seen[6:]
    for (update, masked), (replayed_update, replayed_masked) in zip(received, replay):
        replayed_mask = replayed_masked - sa.encode(replayed_update, max_abs=2.0**20)
        guess = sa.decode(masked - replayed_mask)
        assert np.abs(guess - update).min() > 1e-3  # no coordinate of any update comes back
