"""Secrets at rest: tenant passwords and unrevealed API keys are encrypted, API keys hashed."""

from __future__ import annotations

import hashlib
import secrets
import string
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

if TYPE_CHECKING:
    from sqlalchemy import Engine


class UndecryptableError(ValueError):
    """A stored secret that none of the configured keys decrypts (the wrong key)."""


class SecretBox:
    """Symmetric encryption (Fernet: AES-128-CBC + HMAC-SHA256) with the keys from settings.

    Several keys, newest first (a rotation in progress): the newest encrypts, any of them
    decrypts (``cryptography``'s MultiFernet). A comma-separated string is such a list.
    """

    def __init__(self, keys: str | bytes | Sequence[str | bytes]) -> None:
        if isinstance(keys, str):
            keys = split_keys(keys)
        elif isinstance(keys, bytes):
            keys = [keys]
        if not keys:
            raise ValueError("no secret key given")
        self._fernet = MultiFernet([Fernet(key) for key in keys])
        self._count = len(keys)

    def __repr__(self) -> str:  # never a key, even in a traceback's locals
        return f"SecretBox(<{self._count} key{'s' if self._count != 1 else ''}>)"

    @staticmethod
    def generate_key() -> str:
        """A new random key, as PROVISION_SECRET_KEY expects it."""
        return Fernet.generate_key().decode()

    def encrypt(self, plaintext: str) -> str:
        """``plaintext`` encrypted under the newest key."""
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        """The plaintext of a token made with any of the keys; ValueError (naming the
        setting, never the token) when none of them made it."""
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise UndecryptableError(
                "secret cannot be decrypted with the configured PROVISION_SECRET_KEY"
            ) from None

    def rotate(self, token: str) -> str:
        """The same secret encrypted under the newest key; UndecryptableError as :meth:`decrypt`."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise UndecryptableError(
                "secret cannot be decrypted with the configured PROVISION_SECRET_KEY"
            ) from None


def split_keys(value: str) -> list[str]:
    """The keys of a PROVISION_SECRET_KEY value: comma-separated, newest first, blanks dropped."""
    return [key.strip() for key in value.split(",") if key.strip()]


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


class KeyedStore:
    """A store of encrypted secrets over ``engine``, its key resolved on first use: what needs no
    key (listing, counting, erasing) works without one."""

    def __init__(self, engine: Engine, box: SecretBox | Callable[[], SecretBox]) -> None:
        self.engine = engine
        self._box = box

    @property
    def box(self) -> SecretBox:
        """The key's box (resolved, and kept, on first use)."""
        if not isinstance(self._box, SecretBox):
            self._box = self._box()
        return self._box
