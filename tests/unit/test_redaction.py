"""Secrets stay secret in failures too: no repr, string or validation error shows a password or key."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.bootstrap import App
from services.keys.adapters import RevealedKey
from services.tenant_cluster import ClusterAddress
from services.usecases.credentials import TenantCredentials
from shared.clusters import ClusterMap, TenantClusterConfig
from shared.crypto import SecretBox
from shared.domain.payloads import ApiKeyInfo
from shared.redact import mask_url
from shared.settings import Settings
from tooling.infra import InfraEnv

PASSWORD = "AsySNKv3ryS3cret"
URL = f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:25432/postgres"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (URL, "postgresql+psycopg://postgres:***@127.0.0.1:25432/postgres"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        (
            f"postgresql://h/db?sslmode=require&password={PASSWORD}",
            "postgresql://h/db?sslmode=require&password=***",
        ),
        (f"https://svc:{PASSWORD}@auth.example/v1", "https://svc:***@auth.example/v1"),
        (None, None),
    ],
)
def test_mask_url_replaces_the_password_only(url: str | None, masked: str | None) -> None:
    """mask_url replaces the password (userinfo or ?password=) with *** and keeps the rest."""
    assert mask_url(url) == masked


def test_settings_repr_and_str_mask_every_url_and_key() -> None:
    """Settings' repr and str show no database, tenant, owner or service password, nor the secret key."""
    key = SecretBox.generate_key()
    settings = Settings(
        database_url=URL,
        tenant_database_url=URL,
        migration_database_url=URL,
        auth_url=f"https://svc:{PASSWORD}@auth.example",
        secret_key=key,
        api_tokens=f"dash=sha256:{PASSWORD}",
    )
    for shown in (repr(settings), str(settings)):
        assert PASSWORD not in shown
        assert key not in shown
        assert "postgres:***@127.0.0.1" in shown


def test_a_validation_error_never_echoes_a_value() -> None:
    """A setting that fails validation is named in the error, its value is not."""
    with pytest.raises(ValidationError) as failed:
        Settings(database_url=URL, max_attempts=f"postgresql://postgres:{PASSWORD}@h/db")  # type: ignore[arg-type]
    assert "max_attempts" in str(failed.value)
    assert PASSWORD not in str(failed.value)
    assert PASSWORD not in repr(failed.value)


def test_cluster_records_mask_their_admin_url() -> None:
    """A tenant cluster's config, the map holding it and its address show no password."""
    config = TenantClusterConfig("eu-1", "eu-west-1", 10, URL)
    for shown in (
        repr(config),
        repr(ClusterMap((config,))),
        repr(ClusterMap.single(URL, 5)),
        repr(ClusterAddress(URL)),
    ):
        assert PASSWORD not in shown


def test_infra_env_masks_every_url() -> None:
    """The local servers' environment record shows no password, of the control plane, a tenant cluster
    or the migrations' owner."""
    env = InfraEnv(
        bootstrap_servers="127.0.0.1:1",
        database_url=URL,
        tenant_cluster_urls=(URL, URL),
        tenant_database_url=URL,
        migration_database_url=URL,
    )
    assert PASSWORD not in repr(env)
    assert "***" in repr(env)


def test_app_repr_masks_its_urls(tmp_path: Path) -> None:
    """The wired app shows where it connects without the passwords."""
    app = App(
        settings=Settings(state_dir=tmp_path),
        bootstrap_servers="b:1",
        database_url=URL,
        tenant_database_url=URL,
        migration_database_url=URL,
    )
    assert PASSWORD not in repr(app)
    assert "127.0.0.1:25432" in repr(app)


def test_secrets_held_in_records_never_show() -> None:
    """A revealed API key, a tenant's credentials and a secret box show no secret in repr."""
    key = SecretBox.generate_key()
    info = ApiKeyInfo(key_id="key_1", key_prefix="pk_abc", created_at=dt.datetime.now(dt.UTC))
    assert PASSWORD not in repr(RevealedKey(info, PASSWORD))
    assert PASSWORD not in repr(TenantCredentials("h", 5432, "db", "role", PASSWORD))
    assert key not in repr(SecretBox(key))
    assert key not in repr(SecretBox([key, SecretBox.generate_key()]))
