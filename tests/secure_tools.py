"""A secure local broker of a test module's own (SASL_SSL with SCRAM-SHA-512, TLS from a local
CA, the ACL set applied), in its own state directory on the session's test ports plus an
offset, so it never meets the plaintext broker of the rest of the suite. When it cannot start
the module fails, never skips."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from shared.domain.steps import all_topics
from shared.kafka import ensure_topics
from shared.kafka.security import client_security
from shared.settings import Settings
from tests.conftest import TEST_CONTROLLER_PORT, TEST_KAFKA_PORT, TEST_PG_PORT, TEST_STATE_DIR
from tooling.infra import LocalInfra
from tooling.infra.cli import kafka_identity
from tooling.infra.secure import ADMIN_USER


def secure_state_dir(suffix: str) -> Path:
    """A state directory beside the session's, named ``<session>-<suffix>``."""
    return TEST_STATE_DIR.with_name(f"{TEST_STATE_DIR.name}-{suffix}")


@contextmanager
def running_secure_infra(state_dir: Path, offset: int, *, fresh_kafka: bool = False) -> Iterator[LocalInfra]:
    """A started secure LocalInfra with every topic created as the administrator; stopped at the
    end however the block ends. ``fresh_kafka`` deletes the broker's storage first, so ``up``
    formats it anew. pytest.fail (one line) if the servers do not start."""
    infra = LocalInfra(
        state_dir,
        TEST_KAFKA_PORT + offset,
        TEST_CONTROLLER_PORT + offset,
        TEST_PG_PORT + offset,
        secure=True,
    )
    failure = None
    try:
        if fresh_kafka:
            infra.kafka.stop()  # a broker left by an interrupted run
            infra.kafka.wipe()
        infra.up(lambda line: print(line, file=sys.stderr))
    except Exception as exc:  # whatever went wrong, the tests must fail, never skip
        failure = f"the secure broker did not start: {exc}"
    try:
        if failure is not None:
            pytest.fail(failure, pytrace=False)
        admin = Settings(**secure_settings(infra, ADMIN_USER))
        ensure_topics(
            infra.kafka.bootstrap_servers,
            all_topics(),
            partitions=1,
            replication=1,
            security=client_security(admin),
        )
        yield infra
    finally:
        infra.down()


def secure_settings(infra: LocalInfra, principal: str) -> dict[str, Any]:
    """The Settings values reaching the secure broker as ``principal`` over SASL_SSL."""
    identity = kafka_identity(infra, principal)
    return {
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_ssl_ca_location": infra.security.ca.cert,
        "kafka_sasl_username": identity["PROVISION_KAFKA_SASL_USERNAME"],
        "kafka_sasl_password": identity["PROVISION_KAFKA_SASL_PASSWORD"],
    }
