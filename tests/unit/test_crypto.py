"""Secrets at rest: encryption round trip, API key format and hashing."""

from __future__ import annotations

import pytest

from shared.crypto import SecretBox, generate_api_key, generate_password, hash_api_key


def test_secret_box_round_trip() -> None:
    """What a SecretBox encrypts, it decrypts, and the token does not contain the plaintext."""
    box = SecretBox(SecretBox.generate_key())
    token = box.encrypt("s3cret-password")
    assert "s3cret-password" not in token
    assert box.decrypt(token) == "s3cret-password"


def test_secret_box_is_randomised() -> None:
    """Encrypting twice gives two different tokens."""
    box = SecretBox(SecretBox.generate_key())
    assert box.encrypt("same") != box.encrypt("same")


def test_wrong_key_is_value_error() -> None:
    """Decrypting with another key raises ValueError naming the setting."""
    token = SecretBox(SecretBox.generate_key()).encrypt("secret")
    with pytest.raises(ValueError, match="PROVISION_SECRET_KEY"):
        SecretBox(SecretBox.generate_key()).decrypt(token)


def test_garbage_token_is_value_error() -> None:
    """Decrypting something that is not a token raises ValueError."""
    with pytest.raises(ValueError, match="cannot be decrypted"):
        SecretBox(SecretBox.generate_key()).decrypt("not-a-token")


def test_api_key_format() -> None:
    """An API key is '{prefix}_' followed by a long random part, different every time."""
    key = generate_api_key("live")
    assert key.startswith("live_")
    assert len(key) > len("live_") + 30
    assert generate_api_key("live") != key


def test_api_key_hash_deterministic_and_not_the_secret() -> None:
    """The stored hash is deterministic, hex, and neither contains nor equals the secret."""
    key = generate_api_key("pk")
    digest = hash_api_key(key)
    assert digest == hash_api_key(key)
    assert digest != key
    assert key not in digest
    assert len(digest) == 64
    assert int(digest, 16) >= 0
    assert hash_api_key(generate_api_key("pk")) != digest


def test_passwords_are_random() -> None:
    """Generated passwords are long and unique."""
    assert len(generate_password()) >= 40
    assert generate_password() != generate_password()
