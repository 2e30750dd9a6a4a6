"""A broker's refusal of a client (authentication, TLS, a listener that speaks another protocol,
an ACL) described in one line, without any secret: what a command prints as its error and a
worker logs once per reason (:mod:`shared.kafka.clientlog`)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from confluent_kafka import KafkaError, KafkaException

from shared.redact import mask_url


class KafkaRefusedError(KafkaException):
    """The broker refused this client: authentication, TLS or an ACL; its one argument is the
    line that says so. A KafkaException, so whoever handles an unanswering broker (the API's
    503, the bench's failure line) handles a refusing one too."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "Kafka refused the connection"


_AUTHN_CODES = frozenset({KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED})
_AUTHZ = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "topic",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "group",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "cluster",
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "transactional id",
}
_TLS_HINTS = ("ssl handshake failed", "certificate verify failed", "ssl routines", "state ssl_handshake")
_AUTHN_HINTS = ("sasl authentication", "authentication failed", "sasl handshake", "illegal_sasl_state")
_PROTOCOL_HINT = "incorrect security.protocol"
# librdkafka's OIDC client, when the token endpoint gives no token: the error (code _AUTHENTICATION)
# and the log line (facility OIDC) that precedes it; the rest of the text is the endpoint's answer.
_NO_TOKEN = re.compile(
    r'^(?:Failed to acquire SASL OAUTHBEARER token|Failed to retrieve OIDC token from "[^"]*"):\s*', re.I
)
_AFTER = re.compile(r"\s*\(after \d+ms in state \w+\)")
_ADDRESS = re.compile(r"\b[a-z_]+://\S+")


def principal_of(config: Mapping[str, object]) -> str | None:
    """Who a client with ``config`` is, for an error line: ``<mechanism> as <user>``, the
    client id for OAUTHBEARER, the certificate for mutual TLS; None when anonymous."""
    mechanism = config.get("sasl.mechanism")
    if mechanism == "OAUTHBEARER":
        return f"OAUTHBEARER as {config.get('sasl.oauthbearer.client.id')}"
    if mechanism is not None:
        return f"{mechanism} as {config.get('sasl.username')}"
    certificate = config.get("ssl.certificate.location")
    if certificate is not None:
        return f"the certificate {certificate}"
    return None


def refusal(error: KafkaError, config: Mapping[str, object], *, subject: str | None = None) -> str | None:
    """One line for a broker's refusal of this client (authentication, TLS, a protocol that
    does not match the listener, or an ACL), without any secret; None for any other error.
    ``subject`` names what was refused, e.g. ``write to provisioning.requested``."""
    return refusal_of_text(error.code(), error.str(), config, subject=subject)


def refusal_of_text(
    code: int | None, text: str, config: Mapping[str, object], *, subject: str | None = None
) -> str | None:
    """:func:`refusal` of an error's code and text, or of a client's log line (no code)."""
    text = _first_line(text)
    lowered = _ADDRESS.sub("", text).lower()  # not the broker's address: sasl_ssl://host:port/1
    who = principal_of(config)
    if code in _AUTHZ:
        kind = _AUTHZ[code]
        what = subject or f"use this {kind}"
        return f"{who or 'this client'} is not allowed to {what}: the broker's ACLs refuse it ({text})"
    if code == KafkaError._SSL or (
        code in (None, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN)
        and any(h in lowered for h in _TLS_HINTS)
    ):
        return f"Kafka refused the connection: TLS: {_tls_reason(lowered)} ({text})"
    no_token = _NO_TOKEN.match(text)
    if no_token is not None and code in (None, *_AUTHN_CODES):
        endpoint = mask_url(str(config.get("sasl.oauthbearer.token.endpoint.url", ""))) or "?"
        return (
            f"Kafka refused the connection: authentication failed ({who or 'OAUTHBEARER'}): "
            f"no token from the token endpoint {endpoint}: {text[no_token.end() :] or 'no reason given'}"
        )
    if code in _AUTHN_CODES or any(h in lowered for h in _AUTHN_HINTS) or _sasl_handshake(lowered):
        return f"Kafka refused the connection: authentication failed ({who or 'no SASL mechanism'}): {text}"
    if _PROTOCOL_HINT in lowered:
        protocol = config.get("security.protocol", "PLAINTEXT")
        return (
            f"Kafka refused the connection: the broker's listener does not speak {protocol} "
            f"(PROVISION_KAFKA_SECURITY_PROTOCOL): {text}"
        )
    return None


def _sasl_handshake(lowered: str) -> bool:
    return "sasl" in lowered and "handshake failed" in lowered


def _tls_reason(lowered: str) -> str:
    if "certificate verify failed" in lowered:
        return "certificate verify failed"
    if any(h in lowered for h in ("wrong version number", "packet length too long", "plaintext broker")):
        return "handshake failed, the listener does not speak TLS"
    return "handshake failed"


def _first_line(text: str) -> str:
    """The first line, without librdkafka's ``(after 3ms in state AUTH_REQ)`` tail."""
    lines = text.strip().splitlines()
    return _AFTER.sub("", lines[0]).strip()[:300] if lines else ""
