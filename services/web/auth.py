"""The API's callers: bearer tokens, held only as hashes, compared in constant time.

A token is 32 random bytes (``ptk_`` + URL-safe base64), made by ``provision api-token``,
which prints it once with the entry to configure: ``<caller>:<scopes>[:all-projects]=sha256:<hex>``,
the scopes ``+``-separated (a comma separates entries). A fast hash is
the right one here: a token has 256 bits of entropy, so nothing is gained by guessing
against a leaked hash, unlike a password. Every entry is compared, matched or not, with
``hmac.compare_digest``, so the time taken says nothing about which caller nearly matched.

Each entry carries the token's scopes (:data:`SCOPES`) and whether it is owner-scoped: a caller
without ``admin`` and without ``:all-projects`` sees and acts only on the projects it requested.
An entry of the old form, ``<caller>=sha256:<hex>`` (no scopes), keeps what such a token could
always do, every scope over every project: it counts as ``admin``, and the API warns of it at
start-up (:attr:`TokenSet.legacy`) until it is reissued with scopes.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shared.settings import Settings

TOKEN_PREFIX = "ptk_"  # noqa: S105 - the prefix that marks a token, not one
SCOPES = ("read", "provision", "deprovision", "replay", "admin")
"""What a token may do: ``read`` (the list, a project, its stream), ``provision`` (request and
restore), ``deprovision``, ``replay``; ``admin`` all of them, over every caller's projects."""
ALL_PROJECTS = "all-projects"
"""The entry's mark of a token that is not owner-scoped: it sees every caller's projects."""
_ENTRY = re.compile(
    r"(?P<caller>[A-Za-z0-9][A-Za-z0-9_.@-]{0,63})"
    r"(?::(?P<scopes>[a-z+]+)(?::(?P<mode>[a-z-]+))?)?"
    r"=sha256:(?P<digest>[0-9a-f]{64})"
)
_CALLER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
# A header longer than this is no token of ours; it is refused before it is hashed.
_MAX_TOKEN_LENGTH = 512


NO_TOKENS = (
    "no API token is configured: set PROVISION_API_TOKENS or PROVISION_API_TOKENS_FILE "
    "(entries from `provision api-token <caller> --scope ...`), or pass --insecure-local"
)


class TokenConfigError(ValueError):
    """The token configuration cannot be read; the message names the entry."""


def hash_token(token: str) -> str:
    """The stored form of a token: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Caller:
    """Who presented a token, what it may do, and over whose projects."""

    name: str
    scopes: frozenset[str]
    all_projects: bool = False
    """Not owner-scoped: it sees every caller's projects (as ``admin`` does)."""

    def allows(self, scope: str) -> bool:
        """Whether the token carries ``scope`` (``admin`` carries every one)."""
        return scope in self.scopes or "admin" in self.scopes

    @property
    def owner(self) -> str | None:
        """The owner filter of what it sees: its own name when owner-scoped, else None (all)."""
        return None if self.all_projects or "admin" in self.scopes else self.name

    def sees(self, requested_by: str | None) -> bool:
        """Whether a project requested by ``requested_by`` is visible to it."""
        return self.owner is None or requested_by == self.owner


LOCAL_CALLER = Caller("local", frozenset(SCOPES), all_projects=True)
"""The caller of an API serving without tokens (``--insecure-local``): it may do everything."""


def parse_scopes(names: Iterable[str]) -> frozenset[str]:
    """The scopes named (each may itself be ``+``- or comma-separated); TokenConfigError naming
    the first unknown one, or when none is named."""
    scopes: set[str] = set()
    for name in names:
        for part in re.split(r"[+,]", name):
            scope = part.strip().lower()
            if scope not in SCOPES:
                raise TokenConfigError(f"unknown scope {part.strip()!r}; one of {', '.join(SCOPES)}")
            scopes.add(scope)
    if not scopes:
        raise TokenConfigError(f"name at least one scope: {', '.join(SCOPES)}")
    return frozenset(scopes)


def entry_for(caller: str, scopes: Iterable[str], digest: str, *, all_projects: bool = False) -> str:
    """The entry of a caller's token: ``caller:scope+scope[:all-projects]=sha256:<hex>``."""
    ordered = "+".join(s for s in SCOPES if s in frozenset(scopes))
    return f"{caller}:{ordered}{':' + ALL_PROJECTS if all_projects else ''}={digest}"


def new_token(caller: str, scopes: Iterable[str], *, all_projects: bool = False) -> tuple[str, str]:
    """A new token for ``caller`` and the entry to configure for it, with ``scopes``
    (TokenConfigError for a bad name or an unknown scope)."""
    if not _CALLER.fullmatch(caller):
        raise TokenConfigError(
            f"caller name {caller!r} must be 1-64 letters, digits or . _ @ -, starting with a letter or digit"
        )
    granted = parse_scopes(scopes)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, entry_for(caller, granted, hash_token(token), all_projects=all_projects)


@dataclass(frozen=True, slots=True)
class TokenSet:
    """The configured callers, by the hash of their token."""

    digests: Mapping[str, bytes]
    """caller -> the raw SHA-256 of its token."""
    grants: Mapping[str, Caller] = field(default_factory=dict)
    """caller -> what its token may do (absent: a legacy entry, as ``admin``)."""
    legacy: tuple[str, ...] = ()
    """The callers whose entries carry no scopes (the old form): warned of at start-up."""

    @classmethod
    def parse(cls, entries: Iterable[str], *, source: str) -> TokenSet:
        """Entries ``caller:scopes[:all-projects]=sha256:<hex>`` (or the legacy
        ``caller=sha256:<hex>``); blank ones and ``#`` comments are skipped."""
        digests: dict[str, bytes] = {}
        grants: dict[str, Caller] = {}
        legacy: list[str] = []
        seen: dict[bytes, str] = {}
        for number, raw in enumerate(entries, start=1):
            entry = raw.strip()
            if not entry or entry.startswith("#"):
                continue
            match = _ENTRY.fullmatch(entry)
            if match is None:
                shown = entry.split("=", 1)[0][:64]
                raise TokenConfigError(
                    f"{source}: entry {number} ({shown!r}...) is not "
                    "`<caller>:<scope>+<scope>[:all-projects]=sha256:<64 hex>` "
                    "(make one with `provision api-token <caller> --scope ...`)"
                )
            caller, digest = match["caller"], bytes.fromhex(match["digest"])
            if match["scopes"] is None:
                grants[caller] = Caller(caller, frozenset({"admin"}), all_projects=True)
                legacy.append(caller)
            else:
                if match["mode"] not in (None, ALL_PROJECTS):
                    raise TokenConfigError(
                        f"{source}: entry {number} ({caller!r}) has {match['mode']!r} where only "
                        f"{ALL_PROJECTS!r} may stand"
                    )
                try:
                    scopes = parse_scopes(match["scopes"].split("+"))
                except TokenConfigError as exc:
                    raise TokenConfigError(f"{source}: entry {number} ({caller!r}): {exc}") from None
                grants[caller] = Caller(caller, scopes, all_projects=match["mode"] == ALL_PROJECTS)
            if caller in digests:
                raise TokenConfigError(f"{source}: caller {caller!r} is configured twice")
            if digest in seen:
                raise TokenConfigError(f"{source}: callers {seen[digest]!r} and {caller!r} share a token")
            digests[caller] = digest
            seen[digest] = caller
        return cls(digests, grants, tuple(legacy))

    def caller(self, token: str) -> str | None:
        """The name of the caller whose token this is, or None; every entry is compared."""
        found = self.identify(token)
        return found.name if found is not None else None

    def identify(self, token: str) -> Caller | None:
        """The caller whose token this is, with its scopes, or None; every entry is compared."""
        if not token or len(token) > _MAX_TOKEN_LENGTH:
            return None
        presented = hashlib.sha256(token.encode(errors="surrogateescape")).digest()
        found: str | None = None
        for name, digest in self.digests.items():
            if hmac.compare_digest(presented, digest):
                found = name
        if found is None:
            return None
        return self.grants.get(found) or Caller(found, frozenset({"admin"}), all_projects=True)

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


def legacy_warning(tokens: TokenSet) -> str | None:
    """The one line to warn with at start-up when entries of the old form are configured."""
    if not tokens.legacy:
        return None
    names = ", ".join(repr(name) for name in tokens.legacy)
    return (
        f"API token entries without scopes ({names}) count as admin (every scope, every project); "
        "reissue them with `provision api-token <caller> --scope ...`"
    )
