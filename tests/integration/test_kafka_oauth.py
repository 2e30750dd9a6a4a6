"""SASL OAUTHBEARER on a real broker: librdkafka's own OIDC client credentials flow
(``sasl.oauthbearer.method=oidc``) against a test issuer, the broker checking the JWT with Kafka's
OAuthBearerValidatorCallbackHandler against the issuer's JWKS, and the token's ``sub`` bound by the
project's ACLs like any other principal.

The broker is the secure local one (SCRAM and mTLS as ever, the ACLs applied by the administrator
over SCRAM) with OAUTHBEARER added to its SASL_SSL client listener; it runs in its own state
directory on the session's test ports plus an offset. When it cannot start the module fails,
never skips. The clients are built the project's way: Settings (or a client properties file)
through ``build_app`` and ``client_security``. (No marker: like every module of this directory,
the directory makes it an integration test.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, Producer

from services.bootstrap import App, build_app
from shared.domain.acls import acl_table
from shared.domain.steps import REQUESTED_TOPIC, all_topics, step_by_key
from shared.kafka import ensure_topics
from shared.kafka.acls import admin_client, apply_acls
from shared.kafka.clients import producer_config
from shared.kafka.refusals import KafkaRefusedError, refusal
from shared.kafka.security import client_security
from shared.settings import Settings
from tests.conftest import TEST_CONTROLLER_PORT, TEST_KAFKA_PORT
from tests.oidc_issuer import AUDIENCE, Issuer, running_issuer
from tests.secure_tools import secure_state_dir
from tooling.infra.kafka import KafkaBroker
from tooling.infra.secure import ADMIN_USER, BrokerSecurity, OAuthValidation

OFFSET = 90
"""The broker's ports: the session's plus this (its mTLS and inter-broker ports are +2, +3)."""
STATE_DIR = secure_state_dir("oauth")
PROVISION = str(Path(sys.executable).with_name("provision"))
NO_DATABASE = "postgresql://nobody:unused@127.0.0.1:1/none"
"""DATABASE_URL must be set for a command; nothing here connects to it."""
SCHEMA = "provision-schema"
"""A principal that may both write and read one topic: its step's retry topic, in its group."""
STRANGER = "provision-stranger"
"""A client the issuer knows and the ACLs do not name."""
ELSEWHERE = "provision-elsewhere"
"""A client whose tokens are for another audience than the broker's."""
KEYS = "provision-keys"
"""A principal whose tokens live a few seconds: its client must refresh them and re-authenticate."""
SHORT_LIFETIME = 4
SECRETS = {name: uuid.uuid4().hex for name in (SCHEMA, ADMIN_USER, STRANGER, ELSEWHERE, KEYS)}


@dataclass(frozen=True)
class OAuthBroker:
    broker: KafkaBroker
    issuer: Issuer
    ca: Path

    def settings(self, client_id: str, **overrides: Any) -> Settings:
        """The project's settings reaching the broker as ``client_id`` by OIDC client credentials."""
        values: dict[str, Any] = {
            "kafka_bootstrap_servers": self.broker.bootstrap_servers,
            "database_url": NO_DATABASE,
            "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_mechanism": "OAUTHBEARER",
            "kafka_ssl_ca_location": self.ca,
            "kafka_oauth_token_url": self.issuer.token_url,
            "kafka_oauth_client_id": client_id,
            "kafka_oauth_client_secret": SECRETS[client_id],
        }
        return Settings(**{**values, **overrides})


@pytest.fixture(autouse=True)
def _trust_the_issuer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The issuer serves https with the local CA's certificate: the clients' system CA bundle is
    that CA (SSL_CERT_FILE, which the project takes as the system's bundle)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(BrokerSecurity(STATE_DIR).ca.cert))


@pytest.fixture(scope="module")
def oauth_broker() -> Iterator[OAuthBroker]:
    """The issuer, and a secure broker of its own that also takes its tokens, every topic created
    and the ACL set applied (as the administrator, by SCRAM)."""
    issuer = Issuer(SECRETS, audiences={ELSEWHERE: "some-other-service"}, lifetimes={KEYS: SHORT_LIFETIME})
    ca = BrokerSecurity(STATE_DIR).ca
    served = ca.issue("oidc-issuer")
    with running_issuer(issuer, tls=(served.cert, served.key)):
        validation = OAuthValidation(issuer.jwks_url, AUDIENCE, issuer.url, truststore=ca.cert)
        security = BrokerSecurity(STATE_DIR, oauth=validation)
        broker = KafkaBroker(
            STATE_DIR / "kafka", TEST_KAFKA_PORT + OFFSET, TEST_CONTROLLER_PORT + OFFSET, security=security
        )
        broker.stop()  # a broker left by an interrupted run knows another issuer's address
        failure = None
        try:
            broker.start(lambda line: print(line, file=sys.stderr))
            admin = security.client_config(broker.bootstrap_servers, ADMIN_USER)
            apply_acls(admin_client(admin), acl_table(), timeout=30)
            del admin["bootstrap.servers"]
            ensure_topics(broker.bootstrap_servers, all_topics(), partitions=1, replication=1, security=admin)
        except Exception as exc:  # whatever went wrong, the tests must fail, never skip
            failure = f"the OAUTHBEARER broker did not start: {exc}"
        try:
            if failure is not None:
                pytest.fail(failure, pytrace=False)
            yield OAuthBroker(broker, issuer, security.ca.cert)
        finally:
            broker.stop()


def _round_trip(app: App, group: str, topic: str) -> None:
    """Publish one message with the app's publisher and read it back with its consumer."""
    value = uuid.uuid4().hex.encode()
    app.publisher.produce(topic, b"acme", value, [("event_type", b"oauth-test")])
    app.publisher.flush(15)
    consumer = app.consumer(group)
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            if msg.value() == value:
                return
        pytest.fail(f"the message published to {topic} was not read back within 20 s", pytrace=False)
    finally:
        consumer.close()


def test_a_client_built_from_the_settings_produces_and_consumes_as_its_principal(
    oauth_broker: OAuthBroker,
) -> None:
    """PROVISION_KAFKA_OAUTH_* settings: the client gets a token and writes and reads its own topic."""
    settings = oauth_broker.settings(SCHEMA, kafka_oauth_scope="kafka.write kafka.read")
    app = build_app(settings)
    try:
        _round_trip(app, "provisioning-schema", step_by_key("schema").retry_topic)
    finally:
        app.close()
    assert SCHEMA in oauth_broker.issuer.tokens_issued


LIBRDKAFKA_FORM = """\
# Confluent Cloud, OAuth (librdkafka clients)
bootstrap.servers={bootstrap}
security.protocol=SASL_SSL
sasl.mechanisms=OAUTHBEARER
sasl.oauthbearer.method=oidc
sasl.oauthbearer.token.endpoint.url={token_url}
sasl.oauthbearer.client.id={client_id}
sasl.oauthbearer.client.secret={secret}
sasl.oauthbearer.scope=kafka
sasl.oauthbearer.extensions=logicalCluster=lkc-test1,identityPoolId=pool-test1
ssl.ca.location=ca.pem
https.ca.location=ca.pem
session.timeout.ms=45000
client.id=ccloud-python-client
"""
JAVA_FORM = """\
# Confluent Cloud, OAuth (Java clients)
bootstrap.servers={bootstrap}
security.protocol=SASL_SSL
sasl.mechanism=OAUTHBEARER
sasl.oauthbearer.token.endpoint.url={token_url}
sasl.login.callback.handler.class=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginCallbackHandler
sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required \\
  clientId='{client_id}' clientSecret='{secret}' scope='kafka' \\
  extension_logicalCluster='lkc-test1' extension_identityPoolId='pool-test1';
ssl.ca.location=ca.pem
"""


@pytest.mark.parametrize("form", [LIBRDKAFKA_FORM, JAVA_FORM], ids=["librdkafka", "java"])
def test_a_client_properties_file_produces_and_consumes_as_its_principal(
    oauth_broker: OAuthBroker, tmp_path: Path, form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Confluent Cloud style OAuth properties file alone (brokers, OIDC client, extensions) connects."""
    if "https.ca.location" in form:
        monkeypatch.delenv("SSL_CERT_FILE")  # the file's own CA for the token endpoint, nothing else
    shutil.copy(oauth_broker.ca, tmp_path / "ca.pem")
    properties = tmp_path / "client.properties"
    properties.write_text(
        form.format(
            bootstrap=oauth_broker.broker.bootstrap_servers,
            token_url=oauth_broker.issuer.token_url,
            client_id=SCHEMA,
            secret=SECRETS[SCHEMA],
        )
    )
    app = build_app(Settings(kafka_client_properties=properties, database_url=NO_DATABASE))
    assert (
        app.kafka_config["sasl.oauthbearer.extensions"]
        == "logicalCluster=lkc-test1,identityPoolId=pool-test1"
    )
    try:
        _round_trip(app, "provisioning-schema", step_by_key("schema").retry_topic)
    finally:
        app.close()


def test_a_wrong_client_secret_ends_the_topics_command_in_one_line(oauth_broker: OAuthBroker) -> None:
    """The token endpoint refuses the secret: `topics` exits 1 within its timeout, one line, no secret."""
    wrong = "not-the-secret-" + uuid.uuid4().hex
    env = {name: value for name, value in os.environ.items() if not name.startswith("PROVISION_KAFKA_")}
    env.pop("PROVISION_LOCAL", None)
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": oauth_broker.broker.bootstrap_servers,
            "DATABASE_URL": NO_DATABASE,
            "PROVISION_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "PROVISION_KAFKA_SASL_MECHANISM": "OAUTHBEARER",
            "PROVISION_KAFKA_SSL_CA_LOCATION": str(oauth_broker.ca),
            "PROVISION_KAFKA_OAUTH_TOKEN_URL": oauth_broker.issuer.token_url,
            "PROVISION_KAFKA_OAUTH_CLIENT_ID": ADMIN_USER,
            "PROVISION_KAFKA_OAUTH_CLIENT_SECRET": wrong,
            "SSL_CERT_FILE": str(oauth_broker.ca),
        }
    )
    started = time.monotonic()
    result = subprocess.run(
        [PROVISION, "topics", "--timeout", "5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        f"error: Kafka refused the connection: authentication failed (OAUTHBEARER as {ADMIN_USER}): "
        f"no token from the token endpoint {oauth_broker.issuer.token_url}: "
    ), lines[0]
    assert "invalid_client" in lines[0]
    assert wrong not in result.stdout + result.stderr
    assert elapsed < 20, f"topics took {elapsed:.1f} s"


def _refused(oauth_broker: OAuthBroker, security: dict[str, str]) -> str:
    """The one line with which the broker (or the token endpoint) refuses a client of ``security``."""
    with pytest.raises(KafkaRefusedError) as refused:
        ensure_topics(
            oauth_broker.broker.bootstrap_servers,
            all_topics(),
            partitions=1,
            replication=1,
            timeout=10,
            security=security,
        )
    return str(refused.value)


def test_a_token_for_another_audience_is_refused_by_the_broker(oauth_broker: OAuthBroker) -> None:
    """A token the issuer signed for another service fails the broker's audience check, in one line."""
    security = client_security(oauth_broker.settings(ELSEWHERE))
    line = _refused(oauth_broker, security)
    assert line.startswith(
        f"Kafka refused the connection: authentication failed (OAUTHBEARER as {ELSEWHERE}): "
    ), line
    assert "SASL authentication error" in line and "invalid_token" in line, line
    assert ELSEWHERE in oauth_broker.issuer.tokens_issued


def test_a_principal_without_acls_is_refused_at_write(oauth_broker: OAuthBroker) -> None:
    """A valid token for a sub the ACLs do not name authenticates, then gets TOPIC_AUTHORIZATION_FAILED."""
    config = producer_config(
        oauth_broker.broker.bootstrap_servers,
        security=client_security(oauth_broker.settings(STRANGER)),
        **{"message.timeout.ms": 10000},
    )
    errors: list[KafkaError | None] = []
    producer = Producer(config)
    producer.produce(
        REQUESTED_TOPIC, key=b"acme", value=b"{}", on_delivery=lambda err, _m: errors.append(err)
    )
    producer.flush(15)
    assert errors, "no delivery report"
    error = errors[0]
    assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, error
    line = refusal(error, config, subject=f"write to {REQUESTED_TOPIC}")
    assert line is not None and line.startswith(
        f"OAUTHBEARER as {STRANGER} is not allowed to write to {REQUESTED_TOPIC}"
    ), line


def test_a_long_lived_client_refreshes_its_token_and_re_authenticates(oauth_broker: OAuthBroker) -> None:
    """Tokens of 4 s: one publisher still delivers after its first token expired, on a fresh token."""
    app = build_app(oauth_broker.settings(KEYS))
    topic = step_by_key("keys").retry_topic
    try:
        app.publisher.produce(topic, b"acme", b"{}", [("event_type", b"oauth-test")])
        app.publisher.flush(15)
        time.sleep(SHORT_LIFETIME * 1.5)  # the broker ends a session at its token's expiry (KIP-368)
        app.publisher.produce(topic, b"acme", b"{}", [("event_type", b"oauth-test")])
        app.publisher.flush(15)
    finally:
        app.close()
    assert oauth_broker.issuer.tokens_issued.count(KEYS) >= 2


def test_a_token_endpoint_certificate_the_client_cannot_verify_is_one_line(
    oauth_broker: OAuthBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the system's CAs only, the issuer's local certificate fails verification, said in one line."""
    monkeypatch.delenv("SSL_CERT_FILE")
    security = client_security(oauth_broker.settings(SCHEMA))
    assert security["https.ca.location"] != str(oauth_broker.ca)
    line = _refused(oauth_broker, security)
    assert line.startswith(
        f"Kafka refused the connection: authentication failed (OAUTHBEARER as {SCHEMA}): "
        f"no token from the token endpoint {oauth_broker.issuer.token_url}: "
    ), line
    assert "unable to get local issuer certificate" in line, line
