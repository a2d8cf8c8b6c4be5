"""Credentials of a Flower federation: a certificate authority, the SuperLink's TLS certificate,
and each SuperNode's authentication key pair.

* TLS (``flower-superlink --ssl-ca-certfile ca.crt --ssl-certfile superlink.crt --ssl-keyfile
  superlink.key``; hospitals and ``flwr`` trust ``ca.crt``): X.509 certificates on ECDSA P-384
  keys (NIST SP 800-186), SHA-384 signatures, the SuperLink's names and addresses as subject
  alternative names, which TLS clients check (RFC 6125).
* SuperNode authentication (``flower-superlink --enable-supernode-auth``; the coordinator runs
  ``flwr supernode register <hospital>.pub``; the hospital starts ``flower-supernode
  --auth-supernode-private-key <hospital>``): an ECDSA P-384 key pair in OpenSSH format, the
  NIST curve Flower requires. Each hospital makes its own and sends only the public key; a
  SuperNode whose key was not registered is refused.

For tests and pilots; a production federation may take its certificates from the hospitals'
own PKI. Private keys are written readable by their owner only (mode 0600).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from privkit import _validate
from privkit.federated.sites import _NAME


@dataclass(frozen=True)
class Certificates:
    """Paths of a federation's TLS files."""

    ca_certificate: Path  # every party trusts it
    ca_key: Path  # keep offline: it signs certificates
    superlink_certificate: Path
    superlink_key: Path


def _write_private(path: Path, data: bytes) -> Path:
    """Write ``data`` to a new file readable by its owner only (no window with wider permissions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        raise FileExistsError(f"{path} exists; refusing to overwrite a private key.")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return path


def _subject_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def make_certificates(out: str | Path, *, hosts: Sequence[str], days: int = 365) -> Certificates:
    """Make a CA and the SuperLink's certificate for ``hosts`` (names or IP addresses by
    which the hospitals reach it) in ``out``: ``ca.crt``, ``ca.key``, ``superlink.crt``,
    ``superlink.key``.

    Raises:
        ValueError: no hosts, or ``days`` not a positive integer.
        FileExistsError: a key file already exists (nothing is overwritten).
    """
    if isinstance(hosts, str) or not hosts:
        raise ValueError(
            f"Expected hosts={hosts!r} to be a non-empty list of names or IP addresses."
        )
    _validate.positive_int(days=days)
    out = Path(out)
    for name in ("ca.key", "superlink.key"):
        if (out / name).exists():
            raise FileExistsError(f"{out / name} exists; refusing to overwrite a private key.")
    now = datetime.datetime.now(datetime.timezone.utc)
    until = now + datetime.timedelta(days=days)
    ca_key, key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "privkit federation CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName(_subject_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )

    def pem(private_key) -> bytes:
        return private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    out.mkdir(parents=True, exist_ok=True)
    (out / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (out / "superlink.crt").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    return Certificates(
        out / "ca.crt",
        _write_private(out / "ca.key", pem(ca_key)),
        out / "superlink.crt",
        _write_private(out / "superlink.key", pem(key)),
    )


def make_supernode_key(out: str | Path, *, name: str) -> tuple[Path, Path]:
    """Make a SuperNode's authentication key pair ``<out>/<name>`` (private, OpenSSH) and
    ``<out>/<name>.pub`` (what the coordinator registers); return their paths.

    Raises:
        ValueError: a name that is not a ledger institution id (letters, digits, ``_.-``).
        FileExistsError: the private key exists (nothing is overwritten).
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"Expected name={name!r} of letters, digits, '_', '.', '-'.")
    out = Path(out)
    key = ec.generate_private_key(ec.SECP384R1())
    private = _write_private(
        out / name,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    public = out / f"{name}.pub"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + f" {name}\n".encode()
    )
    return private, public
