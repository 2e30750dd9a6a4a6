"""Side effects of the keys step: API keys in the control plane, hashed; revealed once."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from sqlalchemy import Connection, text

from shared.crypto import KeyedStore, generate_api_key, hash_api_key
from shared.domain.payloads import ApiKeyInfo

VISIBLE_CHARS = 6  # of the random part shown beside the prefix, to tell keys apart


@dataclass(frozen=True, slots=True)
class RevealedKey:
    """A key with its secret, shown to the operator once."""

    info: ApiKeyInfo
    secret: str = field(repr=False)


class NothingToRevealError(LookupError):
    """The project has no keys, or they were revealed already."""


class SqlKeyStore(KeyedStore):
    """API keys in ``api_keys``: hash and visible prefix kept; the secret, encrypted, only
    until it is revealed."""

    def ensure_keys(self, project_id: str, count: int, prefix: str) -> tuple[ApiKeyInfo, ...]:
        """The project's keys, ``count`` in all: the missing ones created (all of them the first
        time, those lost since on a repair), never more: a re-run creates none."""
        with self.engine.begin() as conn:
            # Serialise concurrent attempts for one project on its record.
            conn.execute(text("SELECT 1 FROM projects WHERE project_id = :p FOR UPDATE"), {"p": project_id})
            existing = self._list(conn, project_id)
            if len(existing) >= count:
                return existing
            for _ in range(count - len(existing)):
                secret = generate_api_key(prefix)
                conn.execute(
                    text(
                        "INSERT INTO api_keys (key_id, project_id, key_prefix, key_hash, secret_encrypted) "
                        "VALUES (:id, :p, :prefix, :hash, :enc)"
                    ),
                    {
                        "id": f"key_{secrets.token_hex(8)}",
                        "p": project_id,
                        "prefix": secret[: len(prefix) + 1 + VISIBLE_CHARS],
                        "hash": hash_api_key(secret),
                        "enc": self.box.encrypt(secret),
                    },
                )
            return self._list(conn, project_id)

    def key_counts(self) -> dict[str, int]:
        """How many keys each project holds (projects with none left out): reconcile's listing."""
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT project_id, count(*) FROM api_keys GROUP BY project_id"))
            return {str(project_id): int(n) for project_id, n in rows}

    def list_keys(self, project_id: str) -> tuple[ApiKeyInfo, ...]:
        with self.engine.connect() as conn:
            return self._list(conn, project_id)

    def revoke_keys(self, project_id: str) -> int:
        """Every key of the project deleted (hash, prefix and any unrevealed secret): how many."""
        with self.engine.begin() as conn:
            # The lock ensure_keys takes: a revoke never interleaves with a creation.
            conn.execute(text("SELECT 1 FROM projects WHERE project_id = :p FOR UPDATE"), {"p": project_id})
            removed = conn.execute(text("DELETE FROM api_keys WHERE project_id = :p"), {"p": project_id})
            return int(removed.rowcount)

    @staticmethod
    def _list(conn: Connection, project_id: str) -> tuple[ApiKeyInfo, ...]:
        rows = conn.execute(
            text(
                "SELECT key_id, key_prefix, created_at FROM api_keys "
                "WHERE project_id = :p ORDER BY created_at, key_id"
            ),
            {"p": project_id},
        )
        return tuple(
            ApiKeyInfo(key_id=r.key_id, key_prefix=r.key_prefix, created_at=r.created_at) for r in rows
        )

    def reveal(self, project_id: str) -> list[RevealedKey]:
        """The secrets, once: they are erased in the same transaction. UndecryptableError for
        the wrong key, and nothing is erased."""
        with self.engine.begin() as conn:
            rows = conn.execute(
                text(
                    "SELECT key_id, key_prefix, created_at, secret_encrypted FROM api_keys "
                    "WHERE project_id = :p AND secret_encrypted IS NOT NULL "
                    "ORDER BY created_at, key_id FOR UPDATE"
                ),
                {"p": project_id},
            ).all()
            if not rows:
                raise NothingToRevealError(f"project {project_id!r} has no unrevealed API keys")
            # Decrypted before the erase commits: a key that cannot read them rolls it back.
            revealed = [
                RevealedKey(
                    ApiKeyInfo(key_id=r.key_id, key_prefix=r.key_prefix, created_at=r.created_at),
                    self.box.decrypt(r.secret_encrypted),
                )
                for r in rows
            ]
            conn.execute(
                text(
                    "UPDATE api_keys SET secret_encrypted = NULL, revealed_at = now() "
                    "WHERE project_id = :p AND secret_encrypted IS NOT NULL"
                ),
                {"p": project_id},
            )
        return revealed

    def verify_secret(self, secret: str) -> str | None:
        """The key id a presented secret belongs to, or None."""
        with self.engine.connect() as conn:
            key_id = conn.execute(
                text("SELECT key_id FROM api_keys WHERE key_hash = :h"), {"h": hash_api_key(secret)}
            ).scalar_one_or_none()
        return str(key_id) if key_id is not None else None
