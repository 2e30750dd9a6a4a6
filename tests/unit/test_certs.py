"""The local certificate authority: made once, issuing server, client and expired certificates."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import stat
from pathlib import Path

from cryptography import x509

from tooling.infra.certs import LocalCA


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_the_authority_is_made_once_with_private_keys(tmp_path: Path) -> None:
    """ensure() makes the CA once (a second call keeps it); keys are mode 0600, the directory 0700."""
    ca = LocalCA(tmp_path / "tls")
    ca.ensure()
    first = ca.cert.read_bytes()
    ca.ensure()
    assert ca.cert.read_bytes() == first
    assert stat.S_IMODE((tmp_path / "tls" / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700


def test_a_server_certificate_verifies_against_the_ca_for_the_local_names(tmp_path: Path) -> None:
    """A server certificate names 127.0.0.1 and localhost and loads into a TLS context
    that trusts only the CA."""
    ca = LocalCA(tmp_path / "tls")
    issued = ca.issue("kafka")
    names = _load(issued.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert _load(issued.cert).issuer == _load(ca.cert).subject
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(issued.cert, issued.key)  # the key matches the certificate
    assert stat.S_IMODE(issued.key.stat().st_mode) == 0o600


def test_a_valid_certificate_is_kept_and_an_expired_one_is_in_the_past(tmp_path: Path) -> None:
    """issue() keeps a still-valid certificate across calls; expired=True gives one whose
    validity ended before now; a client certificate carries its name as common name."""
    ca = LocalCA(tmp_path / "tls")
    first = ca.issue("postgres").cert.read_bytes()
    assert ca.issue("postgres").cert.read_bytes() == first
    old = _load(ca.issue("old", client=True, expired=True).cert)
    assert old.not_valid_after_utc < datetime.datetime.now(datetime.UTC)
    client = _load(ca.issue("provision-schema", client=True).cert)
    assert client.subject.rfc4514_string() == "CN=provision-schema"
