"""A throwaway certificate authority for TLS with client certificates.

:func:`make_test_pki` writes a CA, a server certificate (for ``localhost``
and ``127.0.0.1`` unless told otherwise) and one client certificate per name
(the name is the certificate's CN, which Mosquitto can use as the MQTT
username with ``use_identity_as_username``). Keys are ECDSA P-256, written
unencrypted with mode 0600. Good for tests and a quick lab set-up; a real
deployment should use its own CA and keep the CA key off the broker.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclasses.dataclass(frozen=True)
class CertPair:
    """A PEM certificate and its PEM private key, on disk."""

    cert: Path
    key: Path


@dataclasses.dataclass(frozen=True)
class TestPki:
    """What :func:`make_test_pki` wrote."""

    __test__ = False  # not a pytest test class despite the name

    ca_cert: Path
    ca_key: Path
    server: CertPair
    clients: dict[str, CertPair]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgedfl test"), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    days: int,
    *,
    ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_test_pki(
    directory: str | os.PathLike[str],
    *,
    clients: Iterable[str] = ("client",),
    server_names: Iterable[str] = ("localhost", "127.0.0.1"),
    days: int = 30,
) -> TestPki:
    """Write a CA, a server certificate for ``server_names`` and client certificates to ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("edgedfl test CA")
    ca_cert = _issue(ca_name, ca_key, ca_name, ca_key, days, ca=True)
    _write_key(out / "ca.key", ca_key)
    _write_cert(out / "ca.crt", ca_cert)

    sans: list[x509.GeneralName] = []
    names = list(server_names)
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue(
        _name(names[0] if names else "server"), server_key, ca_name, ca_key, days,
        usage=ExtendedKeyUsageOID.SERVER_AUTH, sans=sans,
    )
    _write_key(out / "server.key", server_key)
    _write_cert(out / "server.crt", server_cert)

    pairs: dict[str, CertPair] = {}
    for cn in clients:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(_name(cn), key, ca_name, ca_key, days, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
        pair = CertPair(out / f"{cn}.crt", out / f"{cn}.key")
        _write_key(pair.key, key)
        _write_cert(pair.cert, cert)
        pairs[cn] = pair
    return TestPki(out / "ca.crt", out / "ca.key", CertPair(out / "server.crt", out / "server.key"), pairs)
