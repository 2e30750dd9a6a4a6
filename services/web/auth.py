"""The API's callers: bearer tokens, held only as hashes, compared in constant time.

A token is 32 random bytes (``ptk_`` + URL-safe base64), made by ``provision api-token``,
which prints it once with the entry to configure: ``<caller>=sha256:<hex>``. A fast hash is
the right one here: a token has 256 bits of entropy, so nothing is gained by guessing
against a leaked hash, unlike a password. Every entry is compared, matched or not, with
``hmac.compare_digest``, so the time taken says nothing about which caller nearly matched.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from shared.settings import Settings

TOKEN_PREFIX = "ptk_"  # noqa: S105 - the prefix that marks a token, not one
_ENTRY = re.compile(r"(?P<caller>[A-Za-z0-9][A-Za-z0-9_.@-]{0,63})=sha256:(?P<digest>[0-9a-f]{64})")
_CALLER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
# A header longer than this is no token of ours; it is refused before it is hashed.
_MAX_TOKEN_LENGTH = 512


NO_TOKENS = (
    "no API token is configured: set PROVISION_API_TOKENS or PROVISION_API_TOKENS_FILE "
    "(entries from `provision api-token <caller>`), or pass --insecure-local"
)


class TokenConfigError(ValueError):
    """The token configuration cannot be read; the message names the entry."""


def hash_token(token: str) -> str:
    """The stored form of a token: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def new_token(caller: str) -> tuple[str, str]:
    """A new token for ``caller`` and the entry to configure for it (``caller=sha256:...``)."""
    if not _CALLER.fullmatch(caller):
        raise TokenConfigError(
            f"caller name {caller!r} must be 1-64 letters, digits or . _ @ -, starting with a letter or digit"
        )
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, f"{caller}={hash_token(token)}"


@dataclass(frozen=True, slots=True)
class TokenSet:
    """The configured callers, by the hash of their token."""

    digests: Mapping[str, bytes]
    """caller -> the raw SHA-256 of its token."""

    @classmethod
    def parse(cls, entries: Iterable[str], *, source: str) -> TokenSet:
        """Entries ``caller=sha256:<hex>``; blank ones and ``#`` comments are skipped."""
        digests: dict[str, bytes] = {}
        seen: dict[bytes, str] = {}
        for number, raw in enumerate(entries, start=1):
            entry = raw.strip()
            if not entry or entry.startswith("#"):
                continue
            match = _ENTRY.fullmatch(entry)
            if match is None:
                shown = entry.split("=", 1)[0][:64]
                raise TokenConfigError(
                    f"{source}: entry {number} ({shown!r}...) is not `<caller>=sha256:<64 hex>` "
                    "(make one with `provision api-token <caller>`)"
                )
            caller, digest = match["caller"], bytes.fromhex(match["digest"])
            if caller in digests:
                raise TokenConfigError(f"{source}: caller {caller!r} is configured twice")
            if digest in seen:
                raise TokenConfigError(f"{source}: callers {seen[digest]!r} and {caller!r} share a token")
            digests[caller] = digest
            seen[digest] = caller
        return cls(digests)

    def caller(self, token: str) -> str | None:
        """The caller whose token this is, or None; every entry is compared."""
        if not token or len(token) > _MAX_TOKEN_LENGTH:
            return None
        presented = hashlib.sha256(token.encode(errors="surrogateescape")).digest()
        found: str | None = None
        for name, digest in self.digests.items():
            if hmac.compare_digest(presented, digest):
                found = name
        return found

    def __len__(self) -> int:
        return len(self.digests)


def load_tokens(settings: Settings) -> TokenSet:
    """The callers of ``PROVISION_API_TOKENS`` and ``PROVISION_API_TOKENS_FILE`` together
    (empty when neither is set); TokenConfigError for an unreadable file or a bad entry."""
    entries: list[str] = []
    sources: list[str] = []
    if settings.api_tokens is not None:
        entries += re.split(r"[,\n]", settings.api_tokens.get_secret_value())
        sources.append("PROVISION_API_TOKENS")
    path: Path | None = settings.api_tokens_file
    if path is not None:
        try:
            entries += path.read_text().splitlines()
        except OSError as exc:
            raise TokenConfigError(
                f"PROVISION_API_TOKENS_FILE {path}: {exc.strerror or type(exc).__name__}"
            ) from None
        except UnicodeDecodeError:
            raise TokenConfigError(f"PROVISION_API_TOKENS_FILE {path}: not UTF-8 text") from None
        sources.append(f"PROVISION_API_TOKENS_FILE {path}")
    return TokenSet.parse(entries, source=" + ".join(sources) or "tokens")
