"""A local certificate authority for the local servers' TLS: one CA, made once per state
directory, and the certificates it issues (a server's for ``127.0.0.1`` and ``localhost``, a
client's for mutual TLS, a peer's that is both (a node that serves and connects to its own
listeners), an expired one for the tests that must see it refused).

Layout under its directory (``<state dir>/tls``, mode 0700; keys mode 0600)::

    ca.pem, ca.key            the authority: what a client verifies a server against
    <name>.pem, <name>.key    an issued certificate and its key (PEM; the key PKCS#8, unencrypted)

Keys are EC P-256. An issued certificate is kept while it is valid and made again otherwise,
so a restart of the servers finds the same files.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOCAL_HOSTS = ("127.0.0.1", "localhost")
"""The names a local server's certificate is valid for: what its clients connect to."""


@dataclass(frozen=True)
class Issued:
    """An issued certificate's files."""

    cert: Path
    key: Path


class LocalCA:
    """The authority of one state directory. ``ensure()`` makes it once; ``issue()`` signs."""

    def __init__(self, home: Path) -> None:
        self.home = home

    @property
    def cert(self) -> Path:
        """The CA certificate (what clients pass as their CA file)."""
        return self.home / "ca.pem"

    @property
    def _key(self) -> Path:
        return self.home / "ca.key"

    def ensure(self) -> None:
        """Make the authority if it does not exist yet (ten years)."""
        if self.cert.exists() and self._key.exists():
            return
        self.home.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tenant-provisioning local CA")])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
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
            .sign(key, hashes.SHA256())
        )
        _write_key(self._key, key)
        self.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        name: str,
        *,
        hosts: tuple[str, ...] = LOCAL_HOSTS,
        client: bool = False,
        peer: bool = False,
        expired: bool = False,
    ) -> Issued:
        """A certificate for ``name`` signed by this CA: a server's (valid for ``hosts``), with
        ``client`` one for mutual TLS (its common name is ``name``), with ``peer`` both at once
        (valid for ``hosts`` and as a client). ``expired`` makes one whose validity ended
        yesterday. Kept while valid; made again otherwise."""
        self.ensure()
        issued = Issued(self.home / f"{name}.pem", self.home / f"{name}.key")
        if not expired and _still_valid(issued.cert):
            return issued
        ca_key = serialization.load_pem_private_key(self._key.read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        ca_cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        start, end = (
            (now - datetime.timedelta(days=30), now - datetime.timedelta(days=1))
            if expired
            else (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=825))
        )
        usages = [
            *([ExtendedKeyUsageOID.SERVER_AUTH] if peer or not client else []),
            *([ExtendedKeyUsageOID.CLIENT_AUTH] if peer or client else []),
        ]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if peer or not client:
            builder = builder.add_extension(x509.SubjectAlternativeName(_alt_names(hosts)), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write_key(issued.key, key)
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return issued


def _alt_names(hosts: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _still_valid(path: Path) -> bool:
    if not path.exists() or not path.with_suffix(".key").exists():
        return False
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.not_valid_after_utc > _now() + datetime.timedelta(days=1)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
