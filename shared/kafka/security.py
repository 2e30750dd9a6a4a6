"""How every Kafka client authenticates: the security settings (``PROVISION_KAFKA_*`` and a
client properties file) resolved once, checked, and turned into librdkafka keys (a broker's
refusal, in one line, is :mod:`shared.kafka.refusals`).

Precedence: an explicit ``PROVISION_KAFKA_*`` setting wins over the same key of the properties
file (``PROVISION_KAFKA_CLIENT_PROPERTIES``), which wins over the default (PLAINTEXT). The file's
``bootstrap.servers`` is used only when ``KAFKA_BOOTSTRAP_SERVERS`` is unset. The file may hold
only the keys of :data:`shared.kafka.properties.FILE_KEYS` (and the tuning the project sets itself,
which it passes over): any other key is refused, so no librdkafka setting reaches a
client unseen. Secrets are :class:`SecretStr` until :meth:`KafkaSecurity.config` hands them to a
client; they appear in no repr and no error message.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from shared.kafka.properties import FILE_KEYS, read_client_properties
from shared.redact import mask_url
from shared.settings import ConfigurationError, Settings

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")

# The system's CA bundle on Debian/Ubuntu, Red Hat/Fedora, SUSE, Alpine.
_CA_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
)


@dataclass(frozen=True)
class KafkaSecurity:
    """The resolved security of every client: what :meth:`config` hands to librdkafka."""

    protocol: str = "PLAINTEXT"
    mechanism: str | None = None
    username: str | None = None
    password: SecretStr | None = field(default=None, repr=False)
    ca_location: Path | None = None
    certificate_location: Path | None = None
    key_location: Path | None = None
    key_password: SecretStr | None = field(default=None, repr=False)
    token_url: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = field(default=None, repr=False)
    scope: str | None = None
    https_ca_location: Path | None = None
    """The CA bundle librdkafka's OIDC client checks an https token endpoint against: the file's
    ``https.ca.location``, else the system's (:func:`system_ca_bundle`)."""
    extensions: str | None = None
    """OAUTHBEARER's SASL extensions, ``key=value,key=value`` (Confluent Cloud's
    ``logicalCluster=lkc-…,identityPoolId=pool-…``); from the properties file only."""
    bootstrap_servers: str | None = None
    """``bootstrap.servers`` of the properties file, if it has one."""

    def __repr__(self) -> str:
        shown = {
            "protocol": self.protocol,
            "mechanism": self.mechanism,
            "username": self.username,
            "ca_location": self.ca_location,
            "certificate_location": self.certificate_location,
            "token_url": mask_url(self.token_url),
            "client_id": self.client_id,
        }
        return "KafkaSecurity(" + ", ".join(f"{k}={v!r}" for k, v in shown.items() if v is not None) + ")"

    def config(self) -> dict[str, str]:
        """The librdkafka keys (empty for PLAINTEXT): merged into every client's configuration."""
        config: dict[str, str] = {}
        if self.protocol == "PLAINTEXT":
            return config
        config["security.protocol"] = self.protocol
        if self.protocol in ("SSL", "SASL_SSL"):
            # The broker's certificate is checked against its host name; never turned off here.
            config["ssl.endpoint.identification.algorithm"] = "https"
            for key, path in (
                ("ssl.ca.location", self.ca_location),
                ("ssl.certificate.location", self.certificate_location),
                ("ssl.key.location", self.key_location),
            ):
                if path is not None:
                    config[key] = str(path)
            if self.key_password is not None:
                config["ssl.key.password"] = self.key_password.get_secret_value()
        if self.mechanism is not None:
            config["sasl.mechanism"] = self.mechanism
            if self.mechanism == "OAUTHBEARER":
                config["sasl.oauthbearer.method"] = "oidc"
                config["sasl.oauthbearer.token.endpoint.url"] = self.token_url or ""
                config["sasl.oauthbearer.client.id"] = self.client_id or ""
                config["sasl.oauthbearer.client.secret"] = _reveal(self.client_secret)
                if self.scope:
                    config["sasl.oauthbearer.scope"] = self.scope
                if self.extensions:
                    config["sasl.oauthbearer.extensions"] = self.extensions
                if self.https_ca_location is not None:
                    config["https.ca.location"] = str(self.https_ca_location)
            else:
                config["sasl.username"] = self.username or ""
                config["sasl.password"] = _reveal(self.password)
        return config


def system_ca_bundle() -> Path | None:
    """``SSL_CERT_FILE``, OpenSSL's default file, else the distributions' usual places (None: none
    there). Left alone, the wheels' librdkafka OIDC client reads only the Red Hat path (``probe``
    too), so on Debian or Ubuntu every https token endpoint failed verification."""
    default = ssl.get_default_verify_paths().cafile  # SSL_CERT_FILE wins; None when missing
    for candidate in (default, *_CA_BUNDLES):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _reveal(secret: SecretStr | None) -> str:
    return "" if secret is None else secret.get_secret_value()


def client_security(settings: Settings) -> dict[str, str]:
    """The librdkafka security keys of ``settings``: the one function every client takes them
    from. ConfigurationError (one line naming the setting) for a contradiction or a gap."""
    return resolve_security(settings).config()


def resolve_security(settings: Settings) -> KafkaSecurity:
    """The security ``settings`` describe, the properties file filled in under them, checked."""
    from_file: dict[str, str] = {}
    source = settings.kafka_client_properties
    if source is not None:
        from_file = read_client_properties(source)
    where = {name: f"{source}: {key}" for key, name in FILE_KEYS.items() if name in from_file}

    def pick(env: object, name: str) -> str | None:
        if env is not None:
            return _reveal(env) if isinstance(env, SecretStr) else str(env)
        return from_file.get(name)

    protocol = (pick(settings.kafka_security_protocol, "protocol") or "PLAINTEXT").upper()
    if protocol not in PROTOCOLS:
        raise ConfigurationError(
            f"{where.get('protocol', 'PROVISION_KAFKA_SECURITY_PROTOCOL')}: {protocol!r} is not one of "
            + ", ".join(PROTOCOLS)
        )
    mechanism = pick(settings.kafka_sasl_mechanism, "mechanism")
    if mechanism is not None:
        mechanism = mechanism.upper()
        if mechanism not in MECHANISMS:
            raise ConfigurationError(
                f"{where.get('mechanism', 'PROVISION_KAFKA_SASL_MECHANISM')}: {mechanism!r} is not one of "
                + ", ".join(MECHANISMS)
            )
    oauth_method = from_file.get("oauth_method")
    if oauth_method is not None and oauth_method.lower() != "oidc":
        raise ConfigurationError(
            f"{where['oauth_method']}: only 'oidc' (client credentials) is supported, not {oauth_method!r}"
        )
    algorithm = from_file.get("endpoint_identification")
    if algorithm is not None and algorithm.lower() != "https":
        raise ConfigurationError(
            f"{where['endpoint_identification']}: host name verification stays on; remove the key "
            "or set it to https"
        )

    def secret(env: SecretStr | None, name: str) -> SecretStr | None:
        value = pick(env, name)
        return None if value is None else SecretStr(value)

    def path(env: Path | None, name: str) -> Path | None:
        value = pick(env, name)
        if value is None:
            return None
        resolved = Path(value).expanduser()
        if env is None and source is not None and not resolved.is_absolute():
            resolved = source.parent / resolved  # a file's relative path: from the file's directory
        return resolved

    security = KafkaSecurity(
        protocol=protocol,
        mechanism=mechanism,
        username=pick(settings.kafka_sasl_username, "username"),
        password=secret(settings.kafka_sasl_password, "password"),
        ca_location=path(settings.kafka_ssl_ca_location, "ca"),
        certificate_location=path(settings.kafka_ssl_certificate_location, "certificate"),
        key_location=path(settings.kafka_ssl_key_location, "key"),
        key_password=secret(settings.kafka_ssl_key_password, "key_password"),
        token_url=pick(settings.kafka_oauth_token_url, "token_url"),
        client_id=pick(settings.kafka_oauth_client_id, "client_id"),
        client_secret=secret(settings.kafka_oauth_client_secret, "client_secret"),
        scope=pick(settings.kafka_oauth_scope, "scope"),
        https_ca_location=path(None, "https_ca")
        or (system_ca_bundle() if mechanism == "OAUTHBEARER" else None),
        extensions=from_file.get("extensions"),
        bootstrap_servers=from_file.get("bootstrap_servers"),
    )
    _check(security)
    return security


# RFC 7628: an extension's key is letters; its value printable, here without a comma (the separator).
_EXTENSIONS = re.compile(r"[A-Za-z]+=[\x21-\x2b\x2d-\x7e]+(?:,[A-Za-z]+=[\x21-\x2b\x2d-\x7e]+)*")


def _check(s: KafkaSecurity) -> None:
    """ConfigurationError, naming the setting, for a gap or a contradiction."""
    sasl = s.protocol.startswith("SASL_")
    if sasl and s.mechanism is None:
        raise ConfigurationError(
            f"PROVISION_KAFKA_SECURITY_PROTOCOL is {s.protocol} but PROVISION_KAFKA_SASL_MECHANISM "
            f"is not set ({', '.join(MECHANISMS)})"
        )
    if not sasl and s.mechanism is not None:
        raise ConfigurationError(
            f"PROVISION_KAFKA_SASL_MECHANISM is {s.mechanism} but PROVISION_KAFKA_SECURITY_PROTOCOL is "
            f"{s.protocol}; use SASL_SSL (or SASL_PLAINTEXT)"
        )
    if s.mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        for name, value in (("USERNAME", s.username), ("PASSWORD", s.password)):
            if not value or (isinstance(value, SecretStr) and not value.get_secret_value()):
                raise ConfigurationError(f"PROVISION_KAFKA_SASL_{name} is not set; {s.mechanism} needs it")
    if s.mechanism == "OAUTHBEARER":
        for name, value in (
            ("PROVISION_KAFKA_OAUTH_TOKEN_URL", s.token_url),
            ("PROVISION_KAFKA_OAUTH_CLIENT_ID", s.client_id),
            ("PROVISION_KAFKA_OAUTH_CLIENT_SECRET", _reveal(s.client_secret)),
        ):
            if not value:
                raise ConfigurationError(f"{name} is not set; OAUTHBEARER needs it")
    for key, given in (
        ("https.ca.location", s.https_ca_location is not None),
        ("sasl.oauthbearer.extensions", s.extensions is not None),
    ):
        if given and s.mechanism != "OAUTHBEARER":
            raise ConfigurationError(f"{key} is set but the SASL mechanism is {s.mechanism}, not OAUTHBEARER")
    if s.extensions is not None and not _EXTENSIONS.fullmatch(s.extensions):
        raise ConfigurationError(
            "sasl.oauthbearer.extensions: expected key=value pairs separated by commas "
            "(letters only in a key, e.g. logicalCluster=lkc-1,identityPoolId=pool-2)"
        )
    _check_tls(s)


def _check_tls(s: KafkaSecurity) -> None:
    """ConfigurationError for TLS settings without TLS, half a key pair, or a file not there."""
    tls = s.protocol in ("SSL", "SASL_SSL")
    given_tls = [
        name
        for name, value in (
            ("PROVISION_KAFKA_SSL_CA_LOCATION", s.ca_location),
            ("PROVISION_KAFKA_SSL_CERTIFICATE_LOCATION", s.certificate_location),
            ("PROVISION_KAFKA_SSL_KEY_LOCATION", s.key_location),
            ("PROVISION_KAFKA_SSL_KEY_PASSWORD", s.key_password),
        )
        if value is not None
    ]
    if given_tls and not tls:
        raise ConfigurationError(
            f"{given_tls[0]} is set but PROVISION_KAFKA_SECURITY_PROTOCOL is {s.protocol}, which does not "
            "use TLS; use SSL or SASL_SSL"
        )
    if (s.certificate_location is None) != (s.key_location is None):
        have, lack = ("CERTIFICATE", "KEY") if s.certificate_location is not None else ("KEY", "CERTIFICATE")
        raise ConfigurationError(
            f"PROVISION_KAFKA_SSL_{have}_LOCATION is set without PROVISION_KAFKA_SSL_{lack}_LOCATION; "
            "mutual TLS needs both"
        )
    if s.key_password is not None and s.key_location is None:
        raise ConfigurationError(
            "PROVISION_KAFKA_SSL_KEY_PASSWORD is set without PROVISION_KAFKA_SSL_KEY_LOCATION"
        )
    for name, location in (
        ("PROVISION_KAFKA_SSL_CA_LOCATION", s.ca_location),
        ("PROVISION_KAFKA_SSL_CERTIFICATE_LOCATION", s.certificate_location),
        ("PROVISION_KAFKA_SSL_KEY_LOCATION", s.key_location),
        ("https.ca.location", s.https_ca_location),
    ):
        if location is not None:
            _check_readable(name, location)


def _check_readable(name: str, location: Path) -> None:
    if not location.is_file():
        raise ConfigurationError(f"{name}: {location} does not exist (or is not a file)")
    try:
        with location.open("rb"):
            pass
    except OSError as exc:
        raise ConfigurationError(f"{name}: cannot read {location}: {exc.strerror}") from None
