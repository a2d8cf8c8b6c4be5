"""A federation's credentials, checked by OpenSSL (Python's ssl module) and by Flower's own
key loaders: the SuperLink's certificate passes a TLS handshake for the names it was made for
and no other, a client trusting another CA refuses it, and a SuperNode key is what
``flwr supernode register`` and ``flower-supernode`` accept."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest

pytest.importorskip("cryptography", reason="comes with Flower: pip install 'privkit[flower]'")

from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.serialization import (
    load_ssh_private_key,
    load_ssh_public_key,
)  # noqa: E402

from privkit import cli  # noqa: E402
from privkit.federated import credentials  # noqa: E402


def handshake(certs: credentials.Certificates, *, trust: Path, name: str) -> None:
    """A TLS 1.3 handshake over a socket pair: the SuperLink's side serves its certificate; the
    client checks it against ``trust`` for ``name``. Raises ssl.SSLError on refusal."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certs.superlink_certificate, certs.superlink_key)
    client_ctx = ssl.create_default_context(cafile=str(trust))
    left, right = socket.socketpair()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(left, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError) as err:
            errors.append(err)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(right, server_hostname=name) as tls:
            tls.sendall(b"x")
    finally:
        right.close()
        thread.join(timeout=10)
        left.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> credentials.Certificates:
    return credentials.make_certificates(
        tmp_path_factory.mktemp("certs"), hosts=["127.0.0.1", "superlink.test"]
    )


@pytest.mark.parametrize("name", ["127.0.0.1", "superlink.test"])
def test_the_superlink_certificate_passes_tls_for_its_names(
    certs: credentials.Certificates, name: str
) -> None:
    handshake(certs, trust=certs.ca_certificate, name=name)


def test_tls_refuses_another_name_and_another_ca(
    certs: credentials.Certificates, tmp_path: Path
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(certs, trust=certs.ca_certificate, name="intruder.test")
    other = credentials.make_certificates(tmp_path, hosts=["127.0.0.1"])
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        handshake(certs, trust=other.ca_certificate, name="127.0.0.1")


def test_private_keys_are_the_owners_alone_and_never_overwritten(
    certs: credentials.Certificates,
) -> None:
    for key in (certs.ca_key, certs.superlink_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        credentials.make_certificates(certs.ca_key.parent, hosts=["127.0.0.1"])


def test_a_supernode_key_is_what_flower_loads_and_signs_with(tmp_path: Path) -> None:
    register = pytest.importorskip("flwr.cli.supernode.register")

    private, public = credentials.make_supernode_key(tmp_path, name="hospital-a")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = load_ssh_private_key(private.read_bytes(), None)  # what flower-supernode does
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert register.try_load_public_key(
        public
    )  # what flwr supernode register does; exits on a bad key
    signature = key.sign(
        b"timestamp", ec.ECDSA(hashes.SHA256())
    )  # the registered key checks the node's signature
    load_ssh_public_key(public.read_bytes()).verify(
        signature, b"timestamp", ec.ECDSA(hashes.SHA256())
    )
    with pytest.raises(FileExistsError):
        credentials.make_supernode_key(tmp_path, name="hospital-a")
    with pytest.raises(ValueError, match="name='a/b'"):
        credentials.make_supernode_key(tmp_path, name="a/b")


def test_privkit_flower_commands(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert (
        cli.main(
            ["flower", "certs", "--out", str(tmp_path / "c"), "--host", "10.0.0.5", "--days", "2"]
        )
        == 0
    )
    assert "--ssl-certfile" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "ca.crt",
        "ca.key",
        "superlink.crt",
        "superlink.key",
    ]
    assert cli.main(["flower", "key", "--out", str(tmp_path / "k"), "--name", "hospital-b"]) == 0
    assert "flwr supernode register hospital-b.pub" in capsys.readouterr().out
    assert cli.main(["flower", "key", "--out", str(tmp_path / "k"), "--name", "hospital-b"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
