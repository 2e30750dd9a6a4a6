"""The secret key fails closed: never made up on explicit servers, fingerprinted, checked, rotated."""

from __future__ import annotations

import hashlib
import re
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

import services.bootstrap
from services import secret_key
from services.bootstrap import ConfigurationError, build_app
from services.cli import app as cli
from services.secret_key import SecretKeyMismatchError, fingerprint, reencrypted, refuse_unless_held
from services.worker import run_worker
from shared.crypto import SecretBox, UndecryptableError
from shared.settings import Settings
from tooling.infra import local_infra

OLD, NEW = SecretBox.generate_key(), SecretBox.generate_key()
EXPLICIT = {"kafka_bootstrap_servers": "127.0.0.1:1", "database_url": "postgresql://nobody@127.0.0.1:1/none"}


def _never(*args: object, **kwargs: object) -> object:
    raise AssertionError("this must not connect to anything")


@pytest.fixture(autouse=True)
def no_connections(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing here reaches a server, and no key comes from the environment."""
    monkeypatch.setattr(services.bootstrap, "make_engine", _never)
    monkeypatch.delenv("PROVISION_SECRET_KEY", raising=False)
    monkeypatch.chdir(tmp_path)


def test_no_key_on_explicit_servers_is_a_one_line_configuration_error(tmp_path: Path) -> None:
    """Explicit servers and no PROVISION_SECRET_KEY: the key refuses in one line, no file is made."""
    app = build_app(Settings(**EXPLICIT, state_dir=tmp_path / "state"))
    with pytest.raises(ConfigurationError) as refused:
        _ = app.box
    assert "PROVISION_SECRET_KEY is not set" in str(refused.value)
    assert len(str(refused.value).splitlines()) == 1
    assert not (tmp_path / "state").exists()


def test_a_worker_that_uses_secrets_refuses_without_a_key(tmp_path: Path) -> None:
    """`run_worker` of a step that encrypts refuses (ConfigurationError) before it connects."""
    with pytest.raises(ConfigurationError, match="PROVISION_SECRET_KEY is not set"):
        run_worker("keys", Settings(**EXPLICIT, state_dir=tmp_path))


@pytest.mark.parametrize(
    "command",
    [("keys", "reveal", "p1"), ("credentials", "reveal", "p1"), ("secret-key", "rotate")],
    ids=" ".join,
)
def test_key_using_commands_refuse_without_a_key(
    monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...]
) -> None:
    """A command that encrypts or decrypts, on explicit servers without a key, exits 2 with one line."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", EXPLICIT["kafka_bootstrap_servers"])
    monkeypatch.setenv("DATABASE_URL", EXPLICIT["database_url"])
    result = CliRunner().invoke(cli, list(command))
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "PROVISION_SECRET_KEY is not set" in lines[0]


def test_local_mode_makes_the_key_file_once_with_mode_0600(tmp_path: Path) -> None:
    """In local mode the key is the state directory's file, made once (0600) and then read back."""
    settings = Settings(local=True, state_dir=tmp_path / "state", pg_port=23932, kafka_port=23992)
    local_infra(settings).record()  # as `infra up` leaves it
    first = build_app(settings)
    assert first.local
    key = first.secret_keys[0]
    path = tmp_path / "state" / secret_key.KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    inode = path.stat().st_ino
    assert build_app(settings).secret_keys == (key,)
    assert path.stat().st_ino == inode
    assert path.read_text().strip() == key


def test_a_configured_key_wins_in_local_mode(tmp_path: Path) -> None:
    """In local mode PROVISION_SECRET_KEY, when set, is used and no key file is made."""
    settings = Settings(local=True, state_dir=tmp_path, secret_key=NEW, pg_port=23932, kafka_port=23992)
    local_infra(settings).record()  # as `infra up` leaves it
    assert build_app(settings).secret_keys == (NEW,)
    assert not (tmp_path / secret_key.KEY_FILE).exists()


def test_fingerprint_is_sha256_and_16_hex_digits() -> None:
    """A fingerprint is "sha256:" and the first 16 hex digits of the key's SHA-256."""
    found = fingerprint(NEW)
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", found)
    assert found == "sha256:" + hashlib.sha256(NEW.encode()).hexdigest()[:16]
    assert fingerprint(OLD) != found


def test_another_key_than_the_recorded_one_is_refused_naming_both() -> None:
    """Keys that do not include the recorded one are refused in one line naming both fingerprints."""
    with pytest.raises(SecretKeyMismatchError) as refused:
        refuse_unless_held(fingerprint(OLD), [NEW])
    message = str(refused.value)
    assert fingerprint(OLD) in message
    assert fingerprint(NEW) in message
    assert len(message.splitlines()) == 1
    assert isinstance(refused.value, ConfigurationError)


def test_the_recorded_key_is_accepted_at_any_position() -> None:
    """A key list holding the recorded key, first or not, is accepted."""
    refuse_unless_held(fingerprint(OLD), [NEW, OLD])
    refuse_unless_held(fingerprint(OLD), [OLD, NEW])


def test_several_keys_decrypt_old_tokens_and_encrypt_under_the_newest() -> None:
    """With keys "new,old" the old key's tokens decrypt, and what is encrypted is under the new key."""
    old_token = SecretBox(OLD).encrypt("tenant password")
    both = SecretBox(f"{NEW},{OLD}")
    assert both.decrypt(old_token) == "tenant password"
    fresh = both.encrypt("another")
    assert SecretBox(NEW).decrypt(fresh) == "another"
    with pytest.raises(UndecryptableError):
        SecretBox(OLD).decrypt(fresh)


def test_a_bad_key_in_the_list_is_named_by_position_not_value() -> None:
    """A PROVISION_SECRET_KEY entry that is not a Fernet key is refused by its position, never echoed."""
    with pytest.raises(ConfigurationError, match="key 2 of 2") as refused:
        secret_key.parse_keys(f"{NEW},not-a-key-at-all")
    assert "not-a-key-at-all" not in str(refused.value)


def test_rotation_reencrypts_every_secret_of_a_row_under_the_newest_key() -> None:
    """A row's secrets are re-encrypted under the newest key, absent ones left out; the old key fails."""
    row = {"password_encrypted": SecretBox(OLD).encrypt("pw"), "pending_password_encrypted": None}
    rotated = reencrypted(SecretBox([NEW, OLD]), row)
    assert list(rotated) == ["password_encrypted"]
    assert SecretBox(NEW).decrypt(rotated["password_encrypted"]) == "pw"
    with pytest.raises(UndecryptableError):
        SecretBox(OLD).decrypt(rotated["password_encrypted"])


def test_rotation_refuses_a_secret_no_key_decrypts() -> None:
    """Re-encrypting a token none of the keys made raises UndecryptableError (the CLI's exit 2)."""
    with pytest.raises(UndecryptableError):
        reencrypted(SecretBox([NEW]), {"secret_encrypted": SecretBox(OLD).encrypt("k")})


def test_encrypted_columns_cover_every_encrypted_column_of_the_tables() -> None:
    """Rotation walks every column of shared.db.tables whose name says it is encrypted."""
    from shared.db import tables

    found = {
        (table.name, column.name)
        for table in tables.metadata.tables.values()
        for column in table.columns
        if "encrypted" in column.name
    }
    walked = {(e.table, c) for e in secret_key.ENCRYPTED for c in e.columns}
    assert walked == found
