"""OAUTHBEARER's configuration: SASL extensions and the Java client's OIDC login in a client
properties file, the secure broker's OAuth listener settings, and the token endpoint's refusal
(said by librdkafka's OIDC client in an error and a log line) in one line."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaError
from structlog.testing import capture_logs

from shared.kafka import clientlog
from shared.kafka.clientlog import Refusals, client_logger
from shared.kafka.properties import parse_jaas, read_client_properties
from shared.kafka.refusals import refusal, refusal_of_text
from shared.kafka.security import client_security, resolve_security
from shared.settings import ConfigurationError, Settings
from tooling.infra.secure import ALLOWED_URLS_PROPERTY, BrokerSecurity, OAuthValidation

SECRET = "hunter2-s3cr3t"
TOKEN_URL = "https://idp.example.com/oauth2/token"
OIDC_FILE = f"""\
security.protocol=SASL_SSL
sasl.mechanism=OAUTHBEARER
sasl.oauthbearer.method=oidc
sasl.oauthbearer.token.endpoint.url={TOKEN_URL}
sasl.oauthbearer.client.id=svc
sasl.oauthbearer.client.secret={SECRET}
"""
CONFIG = {
    "sasl.mechanism": "OAUTHBEARER",
    "sasl.oauthbearer.client.id": "svc",
    "sasl.oauthbearer.token.endpoint.url": TOKEN_URL,
}
IDP_ANSWER = '{"error": "invalid_client", "error_description": "The client secret is invalid."}'


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No PROVISION_KAFKA_* from the calling shell; no refusal left over from another test."""
    for name in list(os.environ):
        if name.startswith("PROVISION_KAFKA_"):
            monkeypatch.delenv(name)
    clientlog.forget_refusals()
    clientlog.answer_refusals_myself(False)  # an earlier command's test may have left it on
    yield
    clientlog.forget_refusals()


def _from_file(tmp_path: Path, text: str) -> dict[str, str]:
    source = tmp_path / "client.properties"
    source.write_text(text)
    return client_security(Settings(kafka_client_properties=source))


def test_the_files_sasl_extensions_reach_the_client(tmp_path: Path) -> None:
    """sasl.oauthbearer.extensions (Confluent Cloud's logicalCluster, identityPoolId) is passed on."""
    config = _from_file(
        tmp_path, OIDC_FILE + "sasl.oauthbearer.extensions=logicalCluster=lkc-1,identityPoolId=pool-2\n"
    )
    assert config["sasl.oauthbearer.extensions"] == "logicalCluster=lkc-1,identityPoolId=pool-2"


def test_jaas_extension_options_are_the_sasl_extensions() -> None:
    """OAuthBearerLoginModule's extension_<key> options become sasl.oauthbearer.extensions."""
    line = (
        "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required "
        f"clientId='svc' clientSecret='{SECRET}' "
        "extension_logicalCluster='lkc-1' extension_identityPoolId='pool-2';"
    )
    assert parse_jaas(line)["extensions"] == "logicalCluster=lkc-1,identityPoolId=pool-2"


@pytest.mark.parametrize("extensions", ["logicalCluster", "lkc=a,b", "logical-cluster=lkc-1", "a=b,"])
def test_malformed_extensions_are_refused_in_one_line(tmp_path: Path, extensions: str) -> None:
    """Extensions that are not key=value pairs (letters in a key) are refused before any client."""
    with pytest.raises(ConfigurationError, match=r"sasl\.oauthbearer\.extensions: expected key=value"):
        _from_file(tmp_path, OIDC_FILE + f"sasl.oauthbearer.extensions={extensions}\n")


def test_extensions_without_oauthbearer_are_refused(tmp_path: Path) -> None:
    """SASL extensions are OAUTHBEARER's: with SCRAM they are a mistake, said in one line."""
    text = "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\nsasl.username=a\nsasl.password=b\n"
    with pytest.raises(ConfigurationError, match="not OAUTHBEARER"):
        _from_file(tmp_path, text + "sasl.oauthbearer.extensions=logicalCluster=lkc-1\n")


def test_the_java_clients_oidc_login_handler_is_passed_over(tmp_path: Path) -> None:
    """The Java form's OAuthBearerLoginCallbackHandler is what method=oidc does: the file is taken."""
    handler = "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginCallbackHandler"
    source = tmp_path / "client.properties"
    source.write_text(OIDC_FILE + f"sasl.login.callback.handler.class={handler}\n")
    assert read_client_properties(source)["client_id"] == "svc"
    assert resolve_security(Settings(kafka_client_properties=source)).token_url == TOKEN_URL


def test_another_login_handler_is_refused(tmp_path: Path) -> None:
    """A login handler of another vendor's code cannot run in librdkafka: refused, naming the key."""
    with pytest.raises(ConfigurationError, match=r"sasl\.login\.callback\.handler\.class"):
        _from_file(tmp_path, OIDC_FILE + "sasl.login.callback.handler.class=com.example.MyLogin\n")


def test_the_token_endpoints_refusal_is_one_authentication_line() -> None:
    """librdkafka's "Failed to acquire SASL OAUTHBEARER token" error names the endpoint and its answer."""
    error = KafkaError(KafkaError._AUTHENTICATION, f"Failed to acquire SASL OAUTHBEARER token: {IDP_ANSWER}")
    assert refusal(error, CONFIG) == (
        "Kafka refused the connection: authentication failed (OAUTHBEARER as svc): "
        f"no token from the token endpoint {TOKEN_URL}: {IDP_ANSWER}"
    )


def test_the_oidc_log_line_is_a_refusal_not_a_log_line() -> None:
    """The OIDC facility's "Failed to retrieve OIDC token" log line is noted as the refusal, not logged."""
    refusals = Refusals()
    logger = client_logger(config=CONFIG, refusals=refusals)
    text = f'[thrd:background]: Failed to retrieve OIDC token from "{TOKEN_URL}": {IDP_ANSWER} (401)'
    with capture_logs() as logs:
        logger.log(logging.ERROR, "%s [%s] %s", "OIDC", "rdkafka#producer-1", text)
    assert refusals.line is not None
    assert refusals.line.startswith(
        f"Kafka refused the connection: authentication failed (OAUTHBEARER as svc): no token from the "
        f"token endpoint {TOKEN_URL}: {IDP_ANSWER}"
    )
    assert [entry["event"] for entry in logs] == ["kafka_refused"]


def test_an_unreachable_token_endpoint_is_said_the_same_way() -> None:
    """No answer from the token endpoint at all is the same one line, with curl's reason."""
    line = refusal_of_text(
        KafkaError._AUTHENTICATION,
        "Failed to acquire SASL OAUTHBEARER token: Failed to connect to idp.example.com port 443",
        {**CONFIG, "sasl.oauthbearer.token.endpoint.url": "https://u:pw@idp.example.com/t"},
    )
    assert line is not None and "pw" not in line
    assert line.endswith(
        "no token from the token endpoint https://u:***@idp.example.com/t: "
        "Failed to connect to idp.example.com port 443"
    )


def test_the_secure_broker_takes_oauthbearer_only_when_asked(tmp_path: Path) -> None:
    """With OAuthValidation the listener adds OAUTHBEARER and the JWKS URL is allowed; else unchanged."""
    plain = BrokerSecurity(tmp_path)
    assert plain.jvm_options() == []
    assert plain.mechanisms == "SCRAM-SHA-512"
    jwks = "http://127.0.0.1:8080/jwks"
    oauth = BrokerSecurity(tmp_path, oauth=OAuthValidation(jwks, "kafka", "http://127.0.0.1:8080"))
    assert oauth.jvm_options() == [f"-D{ALLOWED_URLS_PROPERTY}={jwks}"]
    validation = oauth.oauth.properties() if oauth.oauth is not None else {}
    assert validation["sasl.oauthbearer.jwks.endpoint.url"] == jwks
    assert validation["sasl.oauthbearer.expected.audience"] == "kafka"
    assert validation["sasl.oauthbearer.expected.issuer"] == "http://127.0.0.1:8080"
    assert validation["listener.name.client.oauthbearer.sasl.server.callback.handler.class"].endswith(
        "OAuthBearerValidatorCallbackHandler"
    )
    assert oauth.mechanisms == "SCRAM-SHA-512,OAUTHBEARER"


def test_the_token_endpoints_ca_is_the_files_https_ca_location(tmp_path: Path) -> None:
    """https.ca.location (relative: from the file's directory) is the CA of the token endpoint."""
    (tmp_path / "idp-ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    config = _from_file(tmp_path, OIDC_FILE + "https.ca.location=idp-ca.pem\n")
    assert config["https.ca.location"] == str(tmp_path / "idp-ca.pem")


def test_without_one_the_token_endpoints_ca_is_the_systems_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No https.ca.location: the system bundle (SSL_CERT_FILE first), never librdkafka's Red Hat guess."""
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    assert _from_file(tmp_path, OIDC_FILE)["https.ca.location"] == str(bundle)


def test_an_https_ca_without_oauthbearer_is_refused(tmp_path: Path) -> None:
    """https.ca.location is only the token endpoint's: with SCRAM it is a mistake, said in one line."""
    (tmp_path / "idp-ca.pem").write_text("x")
    text = "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\nsasl.username=a\nsasl.password=b\n"
    with pytest.raises(ConfigurationError, match="not OAUTHBEARER"):
        _from_file(tmp_path, text + "https.ca.location=idp-ca.pem\n")
