"""Keys and certificates for a secure deployment: a CA, a SuperLink TLS certificate, SuperNode keys.

Flower's secure mode needs (1) TLS on the SuperLink, with a certificate whose subject alternative
names cover the address the SuperNodes and the `flwr` CLI dial, signed by a CA they trust
(`--root-certificates`), and (2) one EC key pair per SuperNode in OpenSSH format, whose public
half is registered with the SuperLink (`flwr supernode register`) before the node connects.
Everything is generated with `cryptography` (a Flower dependency), so no openssl or ssh-keygen
is needed; private keys are written readable by the owner only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Default names of a loopback deployment; add the host's DNS names and IPs for real devices.
LOOPBACK_NAMES = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class ServerCredentials:
    """Files the SuperLink (`--ssl-*`) and its clients (`--root-certificates`) need."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret readable by the owner only, whatever the umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_server_credentials(
    folder: Path, names: tuple[str, ...] = LOOPBACK_NAMES, days: int = 365
) -> ServerCredentials:
    """A fresh CA and a SuperLink certificate for `names` (IP addresses or DNS names), in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    validity = (now - dt.timedelta(minutes=5), now + dt.timedelta(days=days))

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "FedMMKT deployment CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
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
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    creds = ServerCredentials(folder / "ca.crt", folder / "server.pem", folder / "server.key")
    creds.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    creds.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(creds.server_key, _pem_key(server_key))
    _write_private(folder / "ca.key", _pem_key(ca_key))  # kept to sign a new server cert later
    return creds


def make_node_key(path: Path, comment: str = "") -> Path:
    """An EC P-384 key pair in OpenSSH format (what `flower-supernode` reads): `path` and `path`.pub.

    Returns the public key file, the one to register with `flwr supernode register`.
    """
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    _write_private(path, private)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    pub_path = path.with_name(path.name + ".pub")
    pub_path.write_bytes(public + (f" {comment}".encode() if comment else b"") + b"\n")
    return pub_path
