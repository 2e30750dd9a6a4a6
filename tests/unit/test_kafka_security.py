"""Kafka security from one place: the settings and the client properties file, their checks,
the librdkafka keys every client gets, and a broker's refusal in one line."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError
from structlog.testing import capture_logs

from shared.kafka import clientlog
from shared.kafka.clientlog import Refusals, client_hooks, client_logger, last_refusal
from shared.kafka.properties import parse_jaas, parse_properties, read_client_properties
from shared.kafka.refusals import refusal
from shared.kafka.security import KafkaSecurity, client_security, resolve_security
from shared.settings import ConfigurationError, Settings

SECRET = "hunter2-s3cr3t"
SASL = {
    "kafka_security_protocol": "SASL_SSL",
    "kafka_sasl_mechanism": "SCRAM-SHA-512",
    "kafka_sasl_username": "alice",
    "kafka_sasl_password": SECRET,
}
PLAIN_JAAS = (
    f"org.apache.kafka.common.security.plain.PlainLoginModule required username='KEY1' password='{SECRET}';"
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No PROVISION_KAFKA_* from the calling shell; no refusal left over from another test."""
    import os

    for name in list(os.environ):
        if name.startswith("PROVISION_KAFKA_") or name == "KAFKA_BOOTSTRAP_SERVERS":
            monkeypatch.delenv(name)
    clientlog.forget_refusals()
    clientlog.answer_refusals_myself(False)
    yield
    clientlog.forget_refusals()


def _settings(**values: Any) -> Settings:
    return Settings(**values)


def _pem(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    return path


def _refused(**values: Any) -> str:
    with pytest.raises(ConfigurationError) as caught:
        client_security(_settings(**values))
    message = str(caught.value)
    assert "\n" not in message
    assert SECRET not in message
    return message


# --- the properties file ------------------------------------------------------------------------


def test_properties_read_every_separator_comment_and_continuation() -> None:
    """key=value, key: value, key value, # and ! comments, a backslash continuation and escapes."""
    text = (
        "# a comment\n"
        "! another\n"
        "bootstrap.servers = pkc-1.example.com:9092\n"
        "security.protocol: SASL_SSL\n"
        "sasl.mechanisms PLAIN\n"
        "sasl.username=a\\\n"
        "    b\n"
        "sasl.password=p\\=q\\u0041\n"
        "\n"
    )
    assert parse_properties(text) == {
        "bootstrap.servers": "pkc-1.example.com:9092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "PLAIN",
        "sasl.username": "ab",
        "sasl.password": "p=qA",
    }


def test_jaas_plain_and_scram_give_username_and_password() -> None:
    """The Java form's PlainLoginModule and ScramLoginModule lines give username and password."""
    assert parse_jaas(PLAIN_JAAS) == {"username": "KEY1", "password": SECRET}
    scram = (
        'org.apache.kafka.common.security.scram.ScramLoginModule required username="bob" '
        'password="a \\"quoted\\" pw";'
    )
    assert parse_jaas(scram) == {"username": "bob", "password": 'a "quoted" pw'}


def test_jaas_oauthbearer_gives_the_client_credentials() -> None:
    """OAuthBearerLoginModule's clientId, clientSecret and scope fill the OIDC client."""
    line = (
        "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required "
        f"clientId='svc' clientSecret='{SECRET}' scope='kafka';"
    )
    assert parse_jaas(line) == {"client_id": "svc", "client_secret": SECRET, "scope": "kafka"}


def test_jaas_of_another_module_is_refused_without_its_values() -> None:
    """A Kerberos (or any other) login module is refused in one line naming it, no secret shown."""
    with pytest.raises(ConfigurationError, match="Krb5LoginModule is not supported") as caught:
        parse_jaas(f"com.sun.security.auth.module.Krb5LoginModule required keyTab='{SECRET}';")
    assert SECRET not in str(caught.value)


def test_a_managed_services_file_configures_the_clients(tmp_path: Path) -> None:
    """A managed service's file (jaas, sasl.mechanisms, Java tuning) gives SASL_SSL PLAIN and brokers."""
    source = tmp_path / "client.properties"
    source.write_text(
        "bootstrap.servers=pkc-1.example.com:9092\n"
        "security.protocol=SASL_SSL\n"
        "sasl.mechanisms=PLAIN\n"
        f"sasl.jaas.config={PLAIN_JAAS}\n"
        "client.dns.lookup=use_all_dns_ips\n"
        "session.timeout.ms=45000\n"
        "acks=all\n"
        "client.id=ccloud-python-client\n"
        "schema.registry.url=https://psrc-1.example.com\n"
    )
    security = resolve_security(_settings(kafka_client_properties=source))
    assert security.bootstrap_servers == "pkc-1.example.com:9092"
    assert security.config() == {
        "security.protocol": "SASL_SSL",
        "ssl.endpoint.identification.algorithm": "https",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "KEY1",
        "sasl.password": SECRET,
    }


def test_an_unknown_key_in_the_file_is_refused_naming_it(tmp_path: Path) -> None:
    """A librdkafka setting outside the allow-list is refused in one line naming the key and file."""
    source = tmp_path / "client.properties"
    source.write_text(f"sasl.password={SECRET}\nlinger.ms=5\n")
    with pytest.raises(ConfigurationError) as caught:
        read_client_properties(source)
    message = str(caught.value)
    assert "'linger.ms'" in message and str(source) in message and SECRET not in message


def test_a_missing_properties_file_is_refused(tmp_path: Path) -> None:
    """PROVISION_KAFKA_CLIENT_PROPERTIES naming no file is one line naming the setting."""
    message = _refused(kafka_client_properties=tmp_path / "nope.properties")
    assert message.startswith("PROVISION_KAFKA_CLIENT_PROPERTIES: cannot read")


def test_explicit_settings_win_over_the_file(tmp_path: Path) -> None:
    """An explicit PROVISION_KAFKA_* value wins over the same key of the file; the rest comes from it."""
    source = tmp_path / "client.properties"
    source.write_text(f"security.protocol=SASL_SSL\nsasl.mechanism=PLAIN\nsasl.jaas.config={PLAIN_JAAS}\n")
    security = resolve_security(
        _settings(
            kafka_client_properties=source,
            kafka_sasl_mechanism="SCRAM-SHA-256",
            kafka_sasl_username="override",
        )
    )
    assert (security.mechanism, security.username) == ("SCRAM-SHA-256", "override")
    assert security.password is not None and security.password.get_secret_value() == SECRET


def test_a_relative_path_in_the_file_is_read_from_the_files_directory(tmp_path: Path) -> None:
    """ssl.ca.location relative in the file means next to the file, not the working directory."""
    _pem(tmp_path, "ca.pem")
    source = tmp_path / "client.properties"
    source.write_text("security.protocol=SSL\nssl.ca.location=ca.pem\n")
    assert client_security(_settings(kafka_client_properties=source))["ssl.ca.location"] == str(
        tmp_path / "ca.pem"
    )


def test_the_files_brokers_stand_in_for_kafka_bootstrap_servers(tmp_path: Path) -> None:
    """build_app takes the file's bootstrap.servers when KAFKA_BOOTSTRAP_SERVERS is unset, only then."""
    from services.bootstrap import build_app

    source = tmp_path / "client.properties"
    source.write_text("bootstrap.servers=pkc-1.example.com:9092\n")
    url = "postgresql://nobody@127.0.0.1:1/none"
    app = build_app(_settings(kafka_client_properties=source, database_url=url, state_dir=tmp_path))
    assert app.bootstrap_servers == "pkc-1.example.com:9092"
    explicit = _settings(
        kafka_client_properties=source, database_url=url, kafka_bootstrap_servers="10.0.0.1:9092"
    )
    assert build_app(explicit).bootstrap_servers == "10.0.0.1:9092"


# --- the librdkafka keys ------------------------------------------------------------------------


def test_plaintext_adds_nothing() -> None:
    """Without security settings the clients get no security key at all (PLAINTEXT)."""
    assert client_security(_settings()) == {}


def test_sasl_ssl_with_scram_gives_its_keys_and_keeps_host_name_verification() -> None:
    """SASL_SSL + SCRAM: protocol, mechanism, user, password, and host name verification (https)."""
    assert client_security(_settings(**SASL)) == {
        "security.protocol": "SASL_SSL",
        "ssl.endpoint.identification.algorithm": "https",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "alice",
        "sasl.password": SECRET,
    }


def test_mutual_tls_gives_the_ca_certificate_key_and_key_password(tmp_path: Path) -> None:
    """SSL with a CA, a client certificate and its encrypted key: all four keys."""
    ca, cert, key = _pem(tmp_path, "ca.pem"), _pem(tmp_path, "c.pem"), _pem(tmp_path, "k.pem")
    config = client_security(
        _settings(
            kafka_security_protocol="SSL",
            kafka_ssl_ca_location=ca,
            kafka_ssl_certificate_location=cert,
            kafka_ssl_key_location=key,
            kafka_ssl_key_password=SECRET,
        )
    )
    assert config == {
        "security.protocol": "SSL",
        "ssl.endpoint.identification.algorithm": "https",
        "ssl.ca.location": str(ca),
        "ssl.certificate.location": str(cert),
        "ssl.key.location": str(key),
        "ssl.key.password": SECRET,
    }


def test_oauthbearer_uses_librdkafkas_oidc_client_credentials() -> None:
    """OAUTHBEARER: sasl.oauthbearer.method=oidc with the token URL, client id, secret and scope."""
    config = client_security(
        _settings(
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism="OAUTHBEARER",
            kafka_oauth_token_url="https://idp.example.com/token",
            kafka_oauth_client_id="svc",
            kafka_oauth_client_secret=SECRET,
            kafka_oauth_scope="kafka",
        )
    )
    assert config["sasl.oauthbearer.method"] == "oidc"
    assert config["sasl.oauthbearer.token.endpoint.url"] == "https://idp.example.com/token"
    assert config["sasl.oauthbearer.client.id"] == "svc"
    assert config["sasl.oauthbearer.client.secret"] == SECRET
    assert config["sasl.oauthbearer.scope"] == "kafka"
    assert "sasl.username" not in config


# --- the refusals -------------------------------------------------------------------------------


def test_sasl_without_a_mechanism_is_refused() -> None:
    """SASL_SSL without PROVISION_KAFKA_SASL_MECHANISM names it."""
    assert "PROVISION_KAFKA_SASL_MECHANISM is not set" in _refused(kafka_security_protocol="SASL_SSL")


def test_a_mechanism_without_sasl_is_refused() -> None:
    """A mechanism with PLAINTEXT is a contradiction, named."""
    assert "PROVISION_KAFKA_SASL_MECHANISM is PLAIN" in _refused(kafka_sasl_mechanism="PLAIN")


@pytest.mark.parametrize("missing", ["kafka_sasl_username", "kafka_sasl_password"])
def test_plain_and_scram_without_username_or_password_are_refused(missing: str) -> None:
    """PLAIN/SCRAM without a username or a password names the one missing, no secret in the line."""
    values = {**SASL}
    del values[missing]
    assert f"PROVISION_{missing.upper()} is not set" in _refused(**values)


@pytest.mark.parametrize(
    "missing", ["kafka_oauth_token_url", "kafka_oauth_client_id", "kafka_oauth_client_secret"]
)
def test_oauthbearer_without_its_client_is_refused(missing: str) -> None:
    """OAUTHBEARER without the token URL, client id or secret names the one missing."""
    values = {
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "OAUTHBEARER",
        "kafka_oauth_token_url": "https://idp.example.com/token",
        "kafka_oauth_client_id": "svc",
        "kafka_oauth_client_secret": SECRET,
    }
    del values[missing]
    assert f"PROVISION_{missing.upper()} is not set" in _refused(**values)


def test_a_ca_file_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    """A CA file that is not there is named with its setting."""
    message = _refused(kafka_security_protocol="SSL", kafka_ssl_ca_location=tmp_path / "nope.pem")
    assert message.startswith("PROVISION_KAFKA_SSL_CA_LOCATION:") and "does not exist" in message


def test_an_unreadable_key_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key file that cannot be opened is named with its setting and the reason."""
    cert, key = _pem(tmp_path, "c.pem"), _pem(tmp_path, "k.pem")
    real_open = Path.open

    def deny(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == key:
            raise PermissionError(13, "Permission denied")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", deny)
    message = _refused(
        kafka_security_protocol="SSL", kafka_ssl_certificate_location=cert, kafka_ssl_key_location=key
    )
    assert message == f"PROVISION_KAFKA_SSL_KEY_LOCATION: cannot read {key}: Permission denied"


def test_a_certificate_without_its_key_is_refused(tmp_path: Path) -> None:
    """Mutual TLS needs both halves: a certificate alone names the missing key setting."""
    message = _refused(kafka_security_protocol="SSL", kafka_ssl_certificate_location=_pem(tmp_path, "c.pem"))
    assert "without PROVISION_KAFKA_SSL_KEY_LOCATION" in message


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
def test_tls_settings_without_tls_are_refused(protocol: str, tmp_path: Path) -> None:
    """A CA file with PLAINTEXT or SASL_PLAINTEXT contradicts the protocol, named."""
    values: dict[str, Any] = {
        "kafka_security_protocol": protocol,
        "kafka_ssl_ca_location": _pem(tmp_path, "ca.pem"),
    }
    if protocol == "SASL_PLAINTEXT":
        values.update({k: v for k, v in SASL.items() if k != "kafka_security_protocol"})
    assert "does not use TLS" in _refused(**values)


def test_turning_host_name_verification_off_in_the_file_is_refused(tmp_path: Path) -> None:
    """ssl.endpoint.identification.algorithm= (empty: off) in the file is refused, not obeyed."""
    source = tmp_path / "client.properties"
    source.write_text("security.protocol=SSL\nssl.endpoint.identification.algorithm=\n")
    assert "host name verification stays on" in _refused(kafka_client_properties=source)


def test_secrets_are_in_no_repr() -> None:
    """Settings' and KafkaSecurity's reprs mask the password, the key password and the client secret."""
    settings = _settings(**SASL, kafka_ssl_key_password=SECRET, kafka_oauth_client_secret=SECRET)
    assert SECRET not in repr(settings)
    assert SECRET not in repr(resolve_security(_settings(**SASL)))
    assert "alice" in repr(resolve_security(_settings(**SASL)))


def test_the_worker_environment_hands_the_secrets_on_unmasked() -> None:
    """A spawned worker reads the password itself, not its mask."""
    from services.bootstrap import worker_environment

    env = worker_environment(_settings(**SASL), bootstrap_servers="b:9092", database_url="postgresql://x@h/d")
    assert env["PROVISION_KAFKA_SASL_PASSWORD"] == SECRET
    assert env["PROVISION_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"


# --- a broker's refusal -------------------------------------------------------------------------

CONFIG = {"sasl.mechanism": "PLAIN", "sasl.username": "alice", "sasl.password": SECRET}


def test_an_authentication_error_names_the_mechanism_and_user() -> None:
    """_AUTHENTICATION: 'authentication failed (PLAIN as alice)', and no password in the line."""
    error = KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error: Authentication failed")
    line = refusal(error, CONFIG)
    assert line is not None
    assert line.startswith("Kafka refused the connection: authentication failed (PLAIN as alice)")
    assert SECRET not in line


def test_a_certificate_that_does_not_verify_is_said_so() -> None:
    """_SSL certificate verify failed: 'Kafka refused the connection: TLS: certificate verify failed'."""
    error = KafkaError(
        KafkaError._SSL,
        "ssl://b:9093/1: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed "
        "(after 4ms in state SSL_HANDSHAKE)",
    )
    line = refusal(error, CONFIG)
    assert line is not None and line.startswith(
        "Kafka refused the connection: TLS: certificate verify failed"
    )
    assert "after 4ms" not in line


def test_a_transport_error_with_an_ssl_cause_is_a_tls_refusal() -> None:
    """_TRANSPORT whose text is an SSL handshake failure is a TLS refusal; a plain connect failure is not."""
    tls = KafkaError(
        KafkaError._TRANSPORT, "SSL handshake failed: connecting to a PLAINTEXT broker listener?"
    )
    assert (refusal(tls, CONFIG) or "").startswith("Kafka refused the connection: TLS: handshake failed")
    down = KafkaError(KafkaError._TRANSPORT, "Connect to ipv4#127.0.0.1:1 failed: Connection refused")
    assert refusal(down, CONFIG) is None


def test_acl_refusals_name_the_principal_and_what() -> None:
    """TOPIC_/GROUP_AUTHORIZATION_FAILED: '<principal> is not allowed to <what>: the broker's ACLs ...'."""
    topic = refusal(
        KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "Broker: Topic authorization failed"),
        CONFIG,
        subject="write to provisioning.requested",
    )
    assert topic is not None
    assert topic.startswith(
        "PLAIN as alice is not allowed to write to provisioning.requested: the broker's ACLs refuse it"
    )
    group = refusal(
        KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED, "Broker: Group authorization failed"), CONFIG
    )
    assert group is not None and "is not allowed to use this group" in group


def test_a_flood_of_refused_handshakes_is_one_warning_per_interval() -> None:
    """Fifty refused-handshake log lines give one warning line; the client's Refusals holds it."""
    refusals = Refusals()
    clock = clientlog.time.monotonic
    logger = client_logger(config=CONFIG, refusals=refusals, clock=clock)
    with capture_logs() as logs:
        for n in range(50):
            logger.log(
                logging.ERROR,
                "%s [%s] %s",
                "FAIL",
                "rdkafka#producer-1",
                "[thrd:sasl_ssl://b:9092/bootstrap]: sasl_ssl://b:9092/bootstrap: SASL authentication "
                f"error: Authentication failed (after {n}ms in state AUTH_REQ)",
            )
    warnings = [entry for entry in logs if entry["event"] == "kafka_refused"]
    assert len(warnings) == 1, logs
    assert len(logs) == 1
    assert refusals.line is not None and "authentication failed (PLAIN as alice)" in refusals.line
    assert last_refusal() == refusals.line


def test_the_error_callback_notes_a_refusal_and_logs_other_errors() -> None:
    """error_cb: an authentication error is noted; another error goes to the client's rate-limited log."""
    hooks = client_hooks(CONFIG)
    with capture_logs() as logs:
        hooks["error_cb"](KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
        hooks["error_cb"](KafkaError(KafkaError.SASL_AUTHENTICATION_FAILED, "Authentication failed"))
    assert [entry["event"] for entry in logs] == ["kafka_client_log", "kafka_refused"]
    assert (last_refusal() or "").startswith("Kafka refused the connection: authentication failed")


def test_kafka_security_default_is_plaintext() -> None:
    """The App's default security (tests that build an App by hand) is PLAINTEXT with no keys."""
    assert KafkaSecurity().config() == {}
