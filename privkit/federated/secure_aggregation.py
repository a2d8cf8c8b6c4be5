"""Secure aggregation: the server learns the sum of the sites' updates and no single one.

Bonawitz, Ivanov, Kreuter, Marcedone, McMahan, Patel, Ramage, Segal & Seth (2017), "Practical
secure aggregation for privacy-preserving machine learning" (CCS), the variant for an
honest-but-curious server. n sites, threshold t with n/2 < t <= n, four rounds; the sites talk
only through the server, which relays every message:

0. **Advertise keys** (:meth:`Client.advertise_keys`). Each site makes two X25519 key pairs
   from the OS's entropy, c (for a channel to the other sites) and s (for mask seeds), and
   sends the public halves. The server broadcasts them: the roster U1, at least t sites.
1. **Share keys.** Each site draws a self-mask seed b_i from ``secrets`` and splits b_i and
   its secret key s_sk_i t-out-of-|U1| (:mod:`privkit.federated.shamir`). It sends site j its
   two shares encrypted with ChaCha20-Poly1305 under HKDF(DH(c_sk_i, c_pk_j)), bound to the
   pair (i, j): the server forwards ciphertexts it cannot read. The senders form U2.
2. **Masked input.** Site i encodes its update as fixed point in Z_(2^64) and adds PRG(b_i)
   and, for every other j in U2, +PRG(s_ij) if i < j and -PRG(s_ij) if i > j, where
   s_ij = HKDF(DH(s_sk_i, s_pk_j)) = s_ji. The sites whose input arrives form U3, at least t.
3. **Unmasking.** The server announces U3. Each survivor answers with its shares of b_j for
   every j in U3 and of s_sk_j for every j in U2 \\ U3 (never both for one site) and answers
   one survivor set only. From t answers the server rebuilds the survivors' self-masks and
   the dropped sites' keys, hence their pairwise masks, and removes them; the pairwise masks
   between survivors cancel in the sum. Integer arithmetic mod 2^64 has no rounding: the sum
   is exact up to the fixed-point encoding.

The PRG is SHAKE-256 (FIPS 202). Keys, seeds and masks are fresh in every run (one run per
round of training, so a one-time pad is never reused) and come from the OS's entropy, never
from a seed that a config, a result file or the server knows.

**What it protects.** Against an honest-but-curious server (it follows the protocol and reads
everything it is sent), alone or with up to t - 1 colluding sites, a single masked input is a
one-time pad: they learn the survivors' sum and nothing about an honest site's update beyond
what the sum and their own updates imply. A dropped site's input that arrives late stays
hidden by its self-mask. Since t > n/2 and each site answers one survivor set per run, even a
server that tells different sites different survivor sets cannot collect t shares of both
masks of one site (with c colluding sites, who answer anything, while t > (n + c) / 2).

**Parties.** :class:`Client` is a site, one method per round; :class:`Server` relays and keeps
its whole view; :func:`secure_sum` runs them in process (FedAvg's secure aggregation).

**What it does not.** A server that actively lies is outside this model: one that swaps in
public keys of its own (nothing authenticates the advertised keys) reads every share. That
needs a public-key infrastructure, signatures and the consistency round of Bonawitz et al.'s
malicious-server variant, none of which is implemented. The sum itself is revealed: the sites'
DP noise, not secure aggregation, bounds what it says about a patient.

>>> import numpy as np
>>> updates = {n: np.full(3, v) for n, v in zip("abc", [0.5, -1.25, 2.0])}
>>> secure_sum(updates)
array([1.25, 1.25, 1.25])
>>> secure_sum(updates, dropouts=["c"])  # t = 2 of 3: one site may drop out
array([-0.75, -0.75, -0.75])
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privkit import _validate
from privkit.federated import shamir

FRACTION_BITS = 32  # fixed point: x -> round(x * 2^32) in Z_(2^64)
_SCALE = float(2**FRACTION_BITS)
KEY_BYTES = 32  # X25519 keys, self-mask seeds, derived keys
CHANNEL = b"privkit secure aggregation: share channel"  # HKDF info of the channel key
MASK = b"privkit secure aggregation: pairwise mask seed"  # HKDF info of s_ij
_NONCE_BYTES = 12


class DropoutError(RuntimeError):
    """Too few sites are left for the sum to be revealed safely: fewer than the threshold."""


class ProtocolError(RuntimeError):
    """A party refuses a message that breaks the protocol: out of order, tampered with, a
    second survivor set, a share that rebuilds a key other than the advertised one."""


@dataclass(frozen=True)
class PublicKeys:
    """What a site advertises: the public halves of its channel key c and mask key s (raw X25519)."""

    channel: bytes
    mask: bytes


@dataclass(frozen=True)
class Unmasking:
    """A survivor's answer: shares of the self-mask seeds of survivors and of the mask keys of
    dropped sites, site -> (x, y) with x the answering site's place in the roster."""

    self_mask: Mapping[str, shamir.Share]
    mask_key: Mapping[str, shamir.Share]


def check_threshold(threshold: int, n_sites: int) -> int:
    """Return ``threshold`` if it is an integer with n/2 < t <= n (and n >= 2), else raise naming it.

    >>> check_threshold(2, 4)
    Traceback (most recent call last):
    ...
    ValueError: Expected threshold=2 to be an integer in [3, 4] (more than half of the 4 sites).
    """
    if n_sites < 2:
        raise ValueError(
            f"Expected at least 2 sites, got {n_sites}: one update alone cannot hide in a sum."
        )
    low = n_sites // 2 + 1
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int)
        or not low <= threshold <= n_sites
    ):
        raise ValueError(
            f"Expected threshold={threshold!r} to be an integer in [{low}, {n_sites}] "
            f"(more than half of the {n_sites} sites)."
        )
    return threshold


def agree(private: X25519PrivateKey, public: bytes, *, purpose: bytes) -> bytes:
    """A 32-byte key both ends derive: HKDF-SHA256(X25519(private, public), info=purpose).

    X25519 key agreement (RFC 7748), the shared point run through HKDF (RFC 5869, no salt).
    """
    shared = private.exchange(X25519PublicKey.from_public_bytes(public))
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=purpose).derive(shared)


def prg(seed: bytes, length: int) -> np.ndarray:
    """``length`` pseudo-random uniform elements of Z_(2^64) (uint64): SHAKE-256(seed)."""
    stream = hashlib.shake_256(seed).digest(8 * length)
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64)


def encode(values: np.ndarray, *, max_abs: float) -> np.ndarray:
    """Fixed-point: ``round(x * 2^32)`` as an element of Z_(2^64) (two's complement, uint64).

    ``max_abs`` bounds every value of every site, so that the sum of ``n`` sites cannot wrap:
    ``n * max_abs * 2^32 < 2^63``.

    >>> decode(encode(np.array([-1.5, 0.25]), max_abs=2.0))
    array([-1.5 ,  0.25])
    """
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)) or np.abs(values).max(initial=0.0) > max_abs:
        raise ValueError(
            f"Expected finite values with |x| <= max_abs={max_abs}; got max |x| = "
            f"{np.abs(values).max(initial=0.0):.4g} (clip or rescale the update first)."
        )
    return np.round(values * _SCALE).astype(np.int64).view(np.uint64)


def decode(ring: np.ndarray) -> np.ndarray:
    """Ring elements back to floats (the inverse of :func:`encode`, also for sums)."""
    return ring.view(np.int64).astype(np.float64) / _SCALE


def _signed_pad(seed: bytes, length: int, own: str, other: str) -> np.ndarray:
    """PRG(s_ij) as site ``own`` adds it: +PRG if own < other, -PRG (mod 2^64) otherwise."""
    pad = prg(seed, length)
    return pad if own < other else np.uint64(0) - pad


class Client:
    """One site in one run of the protocol; its keys, self-mask seed and shares live for that run.

    Its methods are the protocol's rounds, called once each and in order: each argument is a
    message the server relays, each return value a message for the server.
    """

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"Expected name={name!r} to be a non-empty string.")
        self.name = name
        self._channel_key = X25519PrivateKey.generate()  # c: OS entropy (OpenSSL)
        self._mask_key = X25519PrivateKey.generate()  # s
        self._self_seed = secrets.token_bytes(KEY_BYTES)  # b
        self._round = 0
        self._roster: dict[str, PublicKeys] = {}
        self._threshold = 0
        self._held: dict[
            str, tuple[shamir.Share, shamir.Share]
        ] = {}  # site -> (share of s_sk, of b)
        self._peers: frozenset[str] = frozenset()  # U2 as this site saw it
        self._answered: tuple[frozenset[str], Unmasking] | None = None

    def _next(self, expected: int, step: str) -> None:
        if self._round != expected:
            raise ProtocolError(
                f"{self.name}: {step} out of order; the rounds are advertise_keys, share_keys, "
                f"masked_input and unmasking, once each."
            )
        self._round += 1

    def advertise_keys(self) -> PublicKeys:
        """Round 0: the public halves of the channel key c and the mask key s."""
        self._next(0, "advertise_keys")
        return self._own_keys()

    def _own_keys(self) -> PublicKeys:
        return PublicKeys(
            self._channel_key.public_key().public_bytes_raw(),
            self._mask_key.public_key().public_bytes_raw(),
        )

    def share_keys(self, roster: Mapping[str, PublicKeys], *, threshold: int) -> dict[str, bytes]:
        """Round 1: shares of s_sk and b for every site of ``roster``, each encrypted to it.

        Args:
            roster: U1, site -> advertised keys, as the server broadcast it (this site's own
                keys included, unchanged).
            threshold: t, validated against the roster: n/2 < t <= n.

        Returns:
            recipient -> nonce || ChaCha20-Poly1305 ciphertext of its two shares.
        """
        self._next(1, "share_keys")
        if roster.get(self.name) != self._own_keys():
            raise ProtocolError(
                f"{self.name}: the roster does not hold the keys this site advertised."
            )
        self._threshold = check_threshold(threshold, len(roster))
        self._roster = dict(roster)
        names = sorted(roster)
        key_shares, self_shares = (
            shamir.split(secret, threshold=threshold, n_shares=len(names))
            for secret in (self._mask_key.private_bytes_raw(), self._self_seed)
        )
        out = {}
        for name, key_share, self_share in zip(names, key_shares, self_shares):
            if name == self.name:
                self._held[name] = (key_share, self_share)
                continue
            plaintext = b"".join(
                y.to_bytes(shamir.SHARE_BYTES, "big") for y in (key_share[1], self_share[1])
            )
            nonce = secrets.token_bytes(_NONCE_BYTES)
            cipher = ChaCha20Poly1305(
                agree(self._channel_key, roster[name].channel, purpose=CHANNEL)
            )
            out[name] = nonce + cipher.encrypt(nonce, plaintext, _route(self.name, name))
        return out

    def masked_input(
        self, update: np.ndarray, inbox: Mapping[str, bytes], *, max_abs: float = 2.0**20
    ) -> np.ndarray:
        """Round 2: encode(update) + PRG(b) + sum_j +-PRG(s_ij) mod 2^64, j over U2.

        Args:
            update: this site's update, a flat float vector with every |value| <= max_abs.
            inbox: sender -> ciphertext, the shares the other members of U2 sent this site.
            max_abs: the fixed-point bound (see :func:`encode`).

        Raises:
            DropoutError: fewer than t sites in U2.
            ProtocolError: a ciphertext that fails authentication, or from a site off the roster.
        """
        self._next(2, "masked_input")
        update = np.asarray(update)
        if update.ndim != 1 or len(update) == 0:
            raise ValueError(
                f"Expected update to be a non-empty flat vector, got shape {update.shape}."
            )
        strangers = sorted(set(inbox) - set(self._roster) | ({self.name} & set(inbox)))
        if strangers:
            raise ProtocolError(
                f"{self.name}: shares from {strangers}, not other sites of the roster."
            )
        if len(inbox) + 1 < self._threshold:
            raise DropoutError(
                f"{self.name}: only {len(inbox) + 1} sites shared keys; the threshold is {self._threshold}."
            )
        x = sorted(self._roster).index(self.name) + 1
        for sender, message in inbox.items():
            cipher = ChaCha20Poly1305(
                agree(self._channel_key, self._roster[sender].channel, purpose=CHANNEL)
            )
            nonce, ciphertext = message[:_NONCE_BYTES], message[_NONCE_BYTES:]
            try:
                plaintext = cipher.decrypt(nonce, ciphertext, _route(sender, self.name))
            except InvalidTag:
                raise ProtocolError(
                    f"{self.name}: the shares from {sender} fail authentication."
                ) from None
            key_y, self_y = plaintext[: shamir.SHARE_BYTES], plaintext[shamir.SHARE_BYTES :]
            self._held[sender] = (
                (x, int.from_bytes(key_y, "big")),
                (x, int.from_bytes(self_y, "big")),
            )
        self._peers = frozenset(inbox) | {self.name}
        length = len(update)
        out = encode(update, max_abs=max_abs) + prg(self._self_seed, length)
        for other in sorted(self._peers - {self.name}):
            seed = agree(self._mask_key, self._roster[other].mask, purpose=MASK)
            out = out + _signed_pad(seed, length, self.name, other)  # uint64: wraps mod 2^64
        return out

    def unmasking(self, survivors: Collection[str]) -> Unmasking:
        """Round 3: shares of b_j for the announced survivors, of s_sk_j for the others of U2.

        Answers one survivor set per run (asked again with the same set, the same answer).

        Raises:
            DropoutError: fewer than t survivors.
            ProtocolError: a second, different survivor set; a set without this site or with
                sites outside U2.
        """
        survivors = frozenset(survivors)
        if self._answered is not None:
            if self._answered[0] != survivors:
                raise ProtocolError(
                    f"{self.name} already answered for the survivors {sorted(self._answered[0])}; it "
                    f"reveals nothing for a second set {sorted(survivors)}."
                )
            return self._answered[1]
        if self._round == 3 and (self.name not in survivors or not survivors <= self._peers):
            raise ProtocolError(
                f"{self.name}: the survivors {sorted(survivors)} must include this site and lie within the "
                f"sites that shared keys, {sorted(self._peers)}; it reveals nothing."
            )
        if self._round == 3 and len(survivors) < self._threshold:
            raise DropoutError(
                f"{self.name}: {len(survivors)} survivors are fewer than the threshold {self._threshold}."
            )
        self._next(3, "unmasking")
        answer = Unmasking(
            self_mask={j: self._held[j][1] for j in sorted(survivors)},
            mask_key={j: self._held[j][0] for j in sorted(self._peers - survivors)},
        )
        self._answered = (survivors, answer)
        return answer


def _route(sender: str, recipient: str) -> bytes:
    """The associated data that binds a ciphertext to its sender and recipient."""
    return repr((sender, recipient)).encode()


class Server:
    """The relay. It keeps everything it is sent (its whole view: ``roster``, ``ciphertexts``,
    ``masked``, ``survivors``, ``answers``) and reveals the survivors' sum.

    Args:
        threshold: t, more than half of the sites that advertise keys.
        max_abs: the fixed-point bound the sites encode with; checked so the sum cannot wrap.
    """

    def __init__(self, *, threshold: int, max_abs: float = 2.0**20) -> None:
        self.threshold = _validate.positive_int(threshold=threshold)
        self.max_abs = _validate.positive(max_abs=max_abs)
        self.roster: dict[str, PublicKeys] = {}  # U1
        self.ciphertexts: dict[str, dict[str, bytes]] = {}  # sender -> recipient -> ciphertext; U2
        self.masked: dict[str, np.ndarray] = {}  # U3
        self.survivors: frozenset[str] = frozenset()
        self.answers: dict[str, Unmasking] = {}

    def _enough(self, arrived: Collection[str], step: str) -> None:
        if len(arrived) < self.threshold:
            of = f" of {len(self.roster)}" if self.roster else ""
            raise DropoutError(
                f"Only {len(arrived)}{of} sites sent {step}; at least {self.threshold} are needed to "
                f"reveal a sum. Redo the round."
            )

    def advertise_keys(self, keys: Mapping[str, PublicKeys]) -> dict[str, PublicKeys]:
        """Round 0: the roster U1 to broadcast, site -> public keys."""
        self._enough(keys, "keys")
        check_threshold(self.threshold, len(keys))
        if len(keys) * self.max_abs * _SCALE >= 2.0**63:
            raise ValueError(
                f"max_abs={self.max_abs} is too large for {len(keys)} sites: the sum could wrap."
            )
        self.roster = dict(keys)
        return dict(self.roster)

    def share_keys(
        self, ciphertexts: Mapping[str, Mapping[str, bytes]]
    ) -> dict[str, dict[str, bytes]]:
        """Round 1: each sender's ciphertexts (to every other roster site) forwarded to their
        recipients in U2, the senders: recipient -> sender -> ciphertext."""
        for sender, sent in ciphertexts.items():
            if sender not in self.roster or set(sent) != set(self.roster) - {sender}:
                raise ValueError(
                    f"Expected {sender!r} to be on the roster and send shares to every other site on it."
                )
        self._enough(ciphertexts, "their shares")
        self.ciphertexts = {s: dict(sent) for s, sent in ciphertexts.items()}
        return {
            r: {s: sent[r] for s, sent in self.ciphertexts.items() if s != r}
            for r in self.ciphertexts
        }

    def masked_input(self, masked: Mapping[str, np.ndarray]) -> frozenset[str]:
        """Round 2: the masked inputs that arrived; returns the survivors U3 to announce."""
        strangers = sorted(set(masked) - set(self.ciphertexts))
        if strangers:
            raise ValueError(
                f"Masked inputs from {strangers}, who did not share keys; U2 = {sorted(self.ciphertexts)}."
            )
        self._enough(masked, "their masked input")
        shapes = {v.shape for v in masked.values()}
        if (
            len(shapes) != 1
            or len(min(shapes)) != 1
            or any(v.dtype != np.uint64 for v in masked.values())
        ):
            raise ValueError(
                f"Expected masked inputs as uint64 vectors of one length, got shapes {sorted(shapes)}."
            )
        self.masked = dict(masked)
        self.survivors = frozenset(masked)
        return self.survivors

    def unmasking(self, answers: Mapping[str, Unmasking]) -> np.ndarray:
        """Round 3: from t survivors' answers, the sum of the survivors' updates.

        Returns:
            The float sum, exact up to fixed-point rounding (each value off by at most
            ``0.5 * 2^-32``, so the sum by ``len(survivors) * 2^-33``).

        Raises:
            DropoutError: fewer than t answers.
            ProtocolError: an answer that does not match the announced survivors, or shares
                that rebuild a key other than the advertised one.
        """
        if not self.survivors:
            raise ProtocolError("unmasking before masked_input: no survivors have been announced.")
        dropped = frozenset(self.ciphertexts) - self.survivors
        for name, answer in answers.items():
            kinds = (set(answer.self_mask), set(answer.mask_key))
            if name not in self.survivors or kinds != (self.survivors, dropped):
                raise ProtocolError(
                    f"{name}'s answer does not match the survivors {sorted(self.survivors)}."
                )
        self._enough(answers, "their unmasking answer")
        self.answers = dict(answers)
        length = len(next(iter(self.masked.values())))
        total = sum(self.masked.values(), np.zeros(length, dtype=np.uint64))
        for name in sorted(self.survivors):
            seed = shamir.combine([a.self_mask[name] for a in answers.values()], length=KEY_BYTES)
            total = total - prg(seed, length)
        for gone in sorted(
            dropped
        ):  # each survivor's pairwise mask with a dropped site is left in the total
            key = X25519PrivateKey.from_private_bytes(
                shamir.combine([a.mask_key[gone] for a in answers.values()], length=KEY_BYTES)
            )
            if key.public_key().public_bytes_raw() != self.roster[gone].mask:
                raise ProtocolError(
                    f"The shares of {gone}'s mask key rebuild a key it did not advertise."
                )
            for name in sorted(self.survivors):
                seed = agree(key, self.roster[name].mask, purpose=MASK)  # s_(name, gone)
                total = total - _signed_pad(seed, length, name, gone)
        return decode(total)


def secure_sum(
    updates: Mapping[str, np.ndarray],
    *,
    threshold: int | None = None,
    dropouts: Collection[str] = (),
    max_abs: float = 2.0**20,
) -> np.ndarray:
    """One run of the protocol in process: the sum of the updates of the sites that stay.

    Every site advertises keys and shares them; the sites in ``dropouts`` then drop out before
    their masked input arrives, so the survivors must recover their pairwise masks.

    Args:
        updates: site name -> its update, a flat float vector (one length for all).
        threshold: t; default a majority, ``len(updates) // 2 + 1``.
        dropouts: sites that drop out after sharing keys; at most ``n - t`` of them.
        max_abs: bound on every |value| (see :func:`encode`).

    Raises:
        DropoutError: fewer than t sites left.
    """
    unknown = sorted(set(dropouts) - set(updates))
    if unknown:
        raise ValueError(
            f"dropouts names unknown site(s) {unknown}; the sites are {sorted(updates)}."
        )
    threshold = check_threshold(
        len(updates) // 2 + 1 if threshold is None else threshold, len(updates)
    )
    clients = {name: Client(name) for name in updates}
    server = Server(threshold=threshold, max_abs=max_abs)
    roster = server.advertise_keys({name: c.advertise_keys() for name, c in clients.items()})
    inbox = server.share_keys(
        {n: c.share_keys(roster, threshold=threshold) for n, c in clients.items()}
    )
    survivors = server.masked_input(
        {
            name: c.masked_input(updates[name], inbox[name], max_abs=max_abs)
            for name, c in clients.items()
            if name not in dropouts
        }
    )
    return server.unmasking(
        {name: clients[name].unmasking(survivors) for name in sorted(survivors)}
    )
