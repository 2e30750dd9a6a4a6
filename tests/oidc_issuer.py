"""A test OIDC issuer: the client-credentials token endpoint librdkafka's ``oidc`` method calls
and the JWKS endpoint the broker's OAuthBearerValidatorCallbackHandler checks tokens with.

Standard library only (http.server in a thread on loopback, a free port); the JWT is RS256,
signed by hand with a ``cryptography`` RSA key (the JWS is base64url(header).base64url(payload)
and a PKCS#1 v1.5 SHA-256 signature over the two), so no JWT library is needed. Clients are
registered with their secret; a token's ``sub`` is the client id, which the broker takes as the
principal (``User:<client id>``), so the ACLs of :mod:`shared.domain.acls` apply to it.
"""

from __future__ import annotations

import base64
import binascii
import json
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

AUDIENCE = "provision-kafka"
KEY_ID = "provision-test-1"
DEFAULT_SCOPE = "kafka"
"""The scope of a token whose request named none: Kafka's validator refuses an empty ``scope``."""
TOKEN_PATH = "/oauth2/token"
JWKS_PATH = "/oauth2/jwks"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_int(value: int) -> str:
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


class Issuer:
    """Signs tokens for its registered clients; serve it with :func:`running_issuer`."""

    def __init__(
        self,
        clients: Mapping[str, str],
        *,
        lifetime: int = 3600,
        audience: str = AUDIENCE,
        audiences: Mapping[str, str] | None = None,
        lifetimes: Mapping[str, int] | None = None,
    ) -> None:
        """``clients``: each client id's secret; ``audiences``: a client's tokens for another
        audience than ``audience`` (a token meant for some other service); ``lifetimes``: a
        client's tokens living that many seconds instead of ``lifetime``."""
        self.clients = dict(clients)
        self.lifetime = lifetime
        self.audience = audience
        self.audiences = dict(audiences or {})
        self.lifetimes = dict(lifetimes or {})
        self.url = ""  # the base URL, once served
        self.tokens_issued: list[str] = []  # the client ids given a token, in order
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    @property
    def token_url(self) -> str:
        return self.url + TOKEN_PATH

    @property
    def jwks_url(self) -> str:
        return self.url + JWKS_PATH

    def jwks(self) -> dict[str, Any]:
        """The public key set: the one signing key, by its ``kid``."""
        numbers = self._key.public_key().public_numbers()
        key = {
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": KEY_ID,
            "n": _b64url_int(numbers.n),
            "e": _b64url_int(numbers.e),
        }
        return {"keys": [key]}

    def token(
        self,
        subject: str,
        scope: str = DEFAULT_SCOPE,
        *,
        audience: str | None = None,
        lifetime: int | None = None,
    ) -> str:
        """A signed JWT for ``subject`` (the issuer's own, for tests that hand one to a client)."""
        now = int(time.time())
        claims = {
            "iss": self.url,
            "sub": subject,
            "aud": audience or self.audience,
            "iat": now,
            "exp": now + (lifetime or self.lifetime),
            "scope": scope,
        }
        header = {"alg": "RS256", "typ": "JWT", "kid": KEY_ID}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self._key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def grant(self, headers: Mapping[str, str], body: str) -> tuple[int, dict[str, Any]]:
        """The token endpoint's answer (status, JSON) to a client-credentials request: the client
        by HTTP Basic auth or by the form's client_id/client_secret."""
        form = {k: v[0] for k, v in parse_qs(body).items()}
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        client_id, secret = form.get("client_id"), form.get("client_secret")
        authorization = headers.get("Authorization", "")
        if authorization.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(authorization[6:].strip()).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return 401, {"error": "invalid_client", "error_description": "bad basic credentials"}
            client_id, _, secret = decoded.partition(":")
        if client_id is None or self.clients.get(client_id) != secret:
            return 401, {
                "error": "invalid_client",
                "error_description": "The client secret supplied for a confidential client is invalid.",
            }
        self.tokens_issued.append(client_id)
        lifetime = self.lifetimes.get(client_id, self.lifetime)
        access = self.token(
            client_id,
            form.get("scope") or DEFAULT_SCOPE,
            audience=self.audiences.get(client_id),
            lifetime=lifetime,
        )
        return 200, {"access_token": access, "token_type": "bearer", "expires_in": lifetime}


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        if self.path != TOKEN_PATH:
            self._answer(404, {"error": "not_found"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace")
        self._answer(*self.server.issuer.grant(dict(self.headers.items()), body))

    def do_GET(self) -> None:
        if self.path == JWKS_PATH:
            self._answer(200, self.server.issuer.jwks())
        else:
            self._answer(404, {"error": "not_found"})

    def _answer(self, status: int, payload: Mapping[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read what was issued from :attr:`Issuer.tokens_issued`."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, issuer: Issuer) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.issuer = issuer


@contextmanager
def running_issuer(issuer: Issuer, tls: tuple[Path, Path] | None = None) -> Iterator[Issuer]:
    """Serve ``issuer`` on a free loopback port for the block's duration: over HTTP, or with
    ``tls`` (a certificate for 127.0.0.1 and its key) over HTTPS."""
    server = _Server(issuer)
    scheme = "http"
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tls[0]), str(tls[1]))
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    issuer.url = f"{scheme}://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="oidc-issuer", daemon=True)
    thread.start()
    try:
        yield issuer
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
