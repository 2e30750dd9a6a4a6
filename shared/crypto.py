"""Secrets at rest: tenant passwords and unrevealed API keys are encrypted, API keys hashed."""

from __future__ import annotations

import hashlib
import secrets
import string

from cryptography.fernet import Fernet, InvalidToken


class SecretBox:
    """Symmetric encryption (Fernet: AES-128-CBC + HMAC-SHA256) with the key from settings."""

    def __init__(self, key: str | bytes) -> None:
        self._fernet = Fernet(key)

    @staticmethod
    def generate_key() -> str:
        """A new random key, as PROVISION_SECRET_KEY expects it."""
        return Fernet.generate_key().decode()

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise ValueError("secret cannot be decrypted with the configured PROVISION_SECRET_KEY") from None


def generate_password() -> str:
    """A tenant role password from the CSPRNG."""
    return secrets.token_urlsafe(32)


_KEY_ALPHABET = string.ascii_letters + string.digits
_KEY_LENGTH = 43  # 43 base-62 characters carry 256 bits


def generate_api_key(prefix: str) -> str:
    """An API key secret, ``{prefix}_{random}``, from the CSPRNG; letters and digits only,
    so the key (and its visible prefix) survives copy-paste and double-click selection."""
    return f"{prefix}_{''.join(secrets.choice(_KEY_ALPHABET) for _ in range(_KEY_LENGTH))}"


def hash_api_key(secret: str) -> str:
    """The stored form of an API key. Keys carry 256 random bits, so a plain SHA-256 is
    enough: there is nothing to brute-force."""
    return hashlib.sha256(secret.encode()).hexdigest()
