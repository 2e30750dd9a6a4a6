"""The local broker's secure mode (``provision infra up --secure``): who connects, how, and as whom.

Listeners of the one node (``kafka_port`` is the client port, as in plaintext mode)::

    CLIENT      SASL_SSL   kafka_port       SCRAM-SHA-512 users, TLS from the state dir's CA
    MTLS        SSL        kafka_port + 2   a client certificate of the same CA is required;
                                            its CN is the principal (CN=provision-schema is
                                            User:provision-schema)
    INTERNAL    SSL        kafka_port + 3   inter-broker; a client certificate is required
    CONTROLLER  SSL        controller_port  KRaft; a client certificate is required

Every listener wants an identity, so none yields ``User:ANONYMOUS``, which is no super user.
The node itself (its registration and heartbeats need CLUSTER_ACTION) connects to its INTERNAL
and CONTROLLER listeners with its own certificate, CN=provision-broker, whence
``super.users=User:provision-admin;User:provision-broker``; any other certificate of the CA on
those ports (a step's) is only its principal, bound by the ACLs like everywhere else.

The users are SCRAM-SHA-512 credentials, one per principal of :mod:`shared.domain.acls`, their
passwords generated once and kept in ``<state dir>/kafka.passwords`` (JSON, mode 0600), never in
``local-env.json``, which only points at that file. They are not written at format time
(``kafka-storage format --add-scram`` takes them on its command line, where any local process
can read them): once the node answers, :meth:`BrokerSecurity.create_users` sets them through the
admin API over the MTLS listener, as provision-admin by its certificate, on every start, so the
broker always holds the file's passwords. No password is ever in a process's arguments.

With :class:`OAuthValidation` (a test's, as yet: ``infra up`` does not offer it) the CLIENT
listener also takes ``OAUTHBEARER``: a JWT whose signature Kafka's
``OAuthBearerValidatorCallbackHandler`` checks against the issuer's JWKS, with its audience (and
issuer); its ``sub`` claim is the principal, so ``sub=provision-requester`` is
``User:provision-requester`` and the same ACLs bind it. Kafka 4 fetches only the OAuth URLs listed
in the JVM's ``org.apache.kafka.sasl.oauthbearer.allowed.urls``: :meth:`BrokerSecurity.jvm_options`.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

# The public names are not re-exported for type checkers (as for shared.kafka's imports).
from confluent_kafka.admin._scram import (
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialUpsertion,
)

from shared.domain.acls import ADMIN, ROLE_NAMES, user_name
from tooling.infra._common import LOOPBACK, InfraError
from tooling.infra.certs import LocalCA
from tooling.infra.topology import INTERNAL_OFFSET, MTLS_OFFSET

MECHANISM = "SCRAM-SHA-512"
OAUTHBEARER = "OAUTHBEARER"
ALLOWED_URLS_PROPERTY = "org.apache.kafka.sasl.oauthbearer.allowed.urls"
"""The JVM system property without which Kafka 4 refuses to fetch a JWKS (or token) URL."""
_OAUTH = "org.apache.kafka.common.security.oauthbearer"
PASSWORDS_FILE = "kafka.passwords"
TLS_DIR = "tls"
ADMIN_USER = user_name(ADMIN)
BROKER_USER = "provision-broker"
"""The node's own principal (its certificate's CN) on its INTERNAL and CONTROLLER listeners."""
SCRAM_ITERATIONS = 8192
USERS: tuple[str, ...] = tuple(user_name(role) for role in ROLE_NAMES)
"""Every SCRAM user: ``provision-<service>`` for the seven step services, then the roles."""


def mtls_port(kafka_port: int) -> int:
    return kafka_port + MTLS_OFFSET


def internal_port(kafka_port: int) -> int:
    return kafka_port + INTERNAL_OFFSET


@dataclass(frozen=True)
class OAuthValidation:
    """How the broker checks an OAUTHBEARER token: signed by a key of ``jwks_url``, for
    ``audience``, from ``issuer`` (its ``iss``; None: any)."""

    jwks_url: str
    audience: str
    issuer: str | None = None
    truststore: Path | None = None
    """The CA (PEM) an https JWKS URL's certificate is checked against; None: the JVM's CAs."""

    def properties(self) -> dict[str, str]:
        """The CLIENT listener's OAUTHBEARER settings (the validator reads the global keys, and
        the TLS of its JWKS requests from the JAAS line's options, not the listener's)."""
        # With options, the broker's own (unsecured) login wants a subject; it is never used, the
        # inter-broker listener being SSL.
        options = (
            ""
            if self.truststore is None
            else f' unsecuredLoginStringClaim_sub="broker" ssl.truststore.type="PEM" '
            f'ssl.truststore.location="{self.truststore}"'
        )
        jaas = f"{_OAUTH}.OAuthBearerLoginModule required{options};"
        settings = {
            "listener.name.client.oauthbearer.sasl.jaas.config": jaas,
            "listener.name.client.oauthbearer.sasl.server.callback.handler.class": (
                f"{_OAUTH}.OAuthBearerValidatorCallbackHandler"
            ),
            # A session lives no longer than its token (KIP-368): the client re-authenticates with
            # the next one, or the broker closes the connection, as a managed service's does.
            "listener.name.client.oauthbearer.connections.max.reauth.ms": "3600000",
            "sasl.oauthbearer.jwks.endpoint.url": self.jwks_url,
            "sasl.oauthbearer.expected.audience": self.audience,
        }
        if self.issuer is not None:
            settings["sasl.oauthbearer.expected.issuer"] = self.issuer
        return settings


@dataclass(frozen=True)
class BrokerSecurity:
    """The secure mode's files under the state directory, and optionally OAUTHBEARER beside SCRAM."""

    state_dir: Path
    oauth: OAuthValidation | None = None

    @property
    def mechanisms(self) -> str:
        """The CLIENT listener's SASL mechanisms."""
        return MECHANISM if self.oauth is None else f"{MECHANISM},{OAUTHBEARER}"

    def jvm_options(self) -> list[str]:
        """The broker JVM's extra options: the JWKS URL allowed, with OAUTHBEARER; none otherwise."""
        return [] if self.oauth is None else [f"-D{ALLOWED_URLS_PROPERTY}={self.oauth.jwks_url}"]

    @property
    def ca(self) -> LocalCA:
        return LocalCA(self.state_dir / TLS_DIR)

    @property
    def passwords_file(self) -> Path:
        return self.state_dir / PASSWORDS_FILE

    def passwords(self) -> dict[str, str]:
        """Every user's password, generated once (the file is 0600; a user missing from it, say
        after an upgrade added a principal, gets one)."""
        try:
            known = json.loads(self.passwords_file.read_text())
        except FileNotFoundError:
            known = {}
        except (OSError, ValueError) as exc:
            raise InfraError(f"cannot read {self.passwords_file}: {exc}") from None
        if not isinstance(known, dict):
            raise InfraError(f"{self.passwords_file} is damaged; delete it and the kafka data to start over")
        passwords = {str(k): str(v) for k, v in known.items()}
        if any(user not in passwords for user in USERS):
            for user in USERS:
                passwords.setdefault(user, secrets.token_hex(24))
            partial = self.passwords_file.with_name(f".{PASSWORDS_FILE}.partial")
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(passwords, out, indent=2, sort_keys=True)
            os.replace(partial, self.passwords_file)
        return passwords

    def password(self, user: str) -> str:
        """One user's password; InfraError naming the known users if it is not one."""
        if user not in USERS:
            raise InfraError(f"no principal {user!r}; expected one of {', '.join(USERS)}")
        return self.passwords()[user]

    def create_users(self, mtls_servers: str, timeout: float = 30.0) -> int:
        """Set every user's SCRAM credential to its password in the file, as provision-admin by
        its certificate on the MTLS listener at ``mtls_servers`` (the CLIENT listener has no
        user before); how many. InfraError naming the first refusal."""
        config: dict[str, Any] = {**self.certificate_config(ADMIN_USER), "bootstrap.servers": mtls_servers}
        admin = AdminClient(config)
        info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
        upserts: list[UserScramCredentialAlteration] = [
            UserScramCredentialUpsertion(user, info, password.encode())
            for user, password in sorted(self.passwords().items())
            if user in USERS
        ]
        try:
            for future in admin.alter_user_scram_credentials(upserts, request_timeout=timeout).values():
                future.result()
        except KafkaException as exc:
            raise InfraError(
                f"kafka refused the SCRAM users as {ADMIN_USER}: {exc.args[0] if exc.args else exc}"
            ) from None
        return len(upserts)

    def keystore(self, home: Path) -> Path:
        """The broker's PEM keystore (its key, then its certificate and the CA's), 0600 in ``home``:
        CN=provision-broker, which it serves every listener with and presents to its own."""
        issued = self.ca.issue(BROKER_USER, peer=True)
        path = home / "keystore.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(issued.key.read_bytes() + issued.cert.read_bytes() + self.ca.cert.read_bytes())
        return path

    def client_certificate(self, user: str, *, expired: bool = False) -> tuple[Path, Path]:
        """A client certificate (and its key) whose CN is ``user``, for the MTLS listener."""
        issued = self.ca.issue(user, client=True, expired=expired)
        return issued.cert, issued.key

    def certificate_config(self, user: str) -> dict[str, str]:
        """The librdkafka settings (no address) connecting over SSL as ``user`` by its certificate."""
        cert, key = self.client_certificate(user)
        return {
            "security.protocol": "SSL",
            "ssl.ca.location": str(self.ca.cert),
            "ssl.certificate.location": str(cert),
            "ssl.key.location": str(key),
        }

    def properties(self, home: Path, port: int, controller_port: int) -> dict[str, str]:
        """The node's listener and authorizer settings in secure mode."""
        client = f"CLIENT://{LOOPBACK}:{port}"
        mtls = f"MTLS://{LOOPBACK}:{mtls_port(port)}"
        internal = f"INTERNAL://{LOOPBACK}:{internal_port(port)}"
        jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        settings = {
            "listeners": f"{client},{mtls},{internal},CONTROLLER://{LOOPBACK}:{controller_port}",
            # The client listener last: running_port() reads the last address.
            "advertised.listeners": f"{internal},{mtls},{client}",
            "listener.security.protocol.map": "CLIENT:SASL_SSL,MTLS:SSL,INTERNAL:SSL,CONTROLLER:SSL",
            "inter.broker.listener.name": "INTERNAL",
            "sasl.enabled.mechanisms": self.mechanisms,
            "listener.name.client.sasl.enabled.mechanisms": self.mechanisms,
            f"listener.name.client.{MECHANISM.lower()}.sasl.jaas.config": jaas,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.keystore(home)),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca.cert),
            # The node's own connections to INTERNAL and CONTROLLER present the keystore's certificate.
            "listener.name.mtls.ssl.client.auth": "required",
            "listener.name.internal.ssl.client.auth": "required",
            "listener.name.controller.ssl.client.auth": "required",
            # CN=provision-schema is User:provision-schema.
            "ssl.principal.mapping.rules": "RULE:^CN=([^,]+)$/$1/,DEFAULT",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"User:{ADMIN_USER};User:{BROKER_USER}",
        }
        if self.oauth is not None:
            settings.update(self.oauth.properties())
        return settings

    def client_config(self, bootstrap_servers: str, user: str) -> dict[str, Any]:
        """A librdkafka configuration connecting as ``user`` over SASL_SSL."""
        return {
            "bootstrap.servers": bootstrap_servers,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": MECHANISM,
            "sasl.username": user,
            "sasl.password": self.password(user),
            "ssl.ca.location": str(self.ca.cert),
        }
