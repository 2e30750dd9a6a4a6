"""The control plane's secret key: loaded (failing closed), fingerprinted, checked, rotated.

A process that encrypts or decrypts tenant secrets must hold the key they are encrypted with.
So no process on explicit servers ever makes a key up (it would encrypt with a key nobody else
has): without ``PROVISION_SECRET_KEY`` it refuses. Only local mode, where the bootstrap starts
its own servers, keeps a key file in the state directory. The control plane records the
fingerprint of its key (table ``secret_key_fingerprint``): the first process that uses a key
records it, and a process whose keys do not include it refuses to start, naming both.

``PROVISION_SECRET_KEY`` may hold several keys, comma-separated, newest first: the newest
encrypts, every one decrypts. :func:`rotate` re-encrypts every stored secret under the newest
key and records its fingerprint.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.exc import ProgrammingError

from shared.crypto import SecretBox, split_keys
from shared.db import tables
from shared.settings import ConfigurationError, Settings

KEY_FILE = "secret.key"
"""The local mode's key, in the state directory."""


@dataclass(frozen=True, slots=True)
class EncryptedColumns:
    """A table's encrypted columns, and the key its rows are walked by."""

    table: str
    key: str
    columns: tuple[str, ...]


ENCRYPTED: tuple[EncryptedColumns, ...] = (
    EncryptedColumns(
        tables.tenant_credentials.name,
        "project_id",
        ("password_encrypted", "pending_password_encrypted"),
    ),
    EncryptedColumns(tables.api_keys.name, "key_id", ("secret_encrypted",)),
)
"""Every column of ``shared.db.tables`` that holds a secret encrypted with the key."""


class SecretKeyMismatchError(ConfigurationError):
    """The configured keys do not include the one the control plane's secrets are under."""


def fingerprint(key: str) -> str:
    """``sha256:`` and the first 16 hex digits of the key's SHA-256: names a key, reveals nothing."""
    return "sha256:" + hashlib.sha256(key.strip().encode()).hexdigest()[:16]


def parse_keys(value: str) -> tuple[str, ...]:
    """The keys of a PROVISION_SECRET_KEY value, newest first; ConfigurationError naming the
    position (never the value) of a key that is not a Fernet key."""
    keys = tuple(split_keys(value))
    if not keys:
        raise ConfigurationError("PROVISION_SECRET_KEY is empty; set it to the control plane's key")
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except ValueError:
            raise ConfigurationError(
                f"PROVISION_SECRET_KEY key {position} of {len(keys)} is not a Fernet key "
                "(32 url-safe base64-encoded bytes)"
            ) from None
    return keys


def load_keys(settings: Settings, *, local: bool) -> tuple[str, ...]:
    """The configured keys, newest first. Without PROVISION_SECRET_KEY: in local mode the
    state directory's key (made, mode 0600, the first time); otherwise ConfigurationError."""
    if settings.secret_key is not None:
        return parse_keys(settings.secret_key.get_secret_value())
    if not local:
        raise ConfigurationError(
            "PROVISION_SECRET_KEY is not set; a process on explicit servers never makes a key up: "
            "set it to the control plane's key (`provision secret-key fingerprint` shows the recorded one)"
        )
    return (local_key(Path(settings.state_dir)),)


def local_key(state_dir: Path) -> str:
    """The local mode's key, kept in ``state_dir`` (mode 0600), made on first use."""
    path = state_dir / KEY_FILE
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first: read theirs
        else:
            with os.fdopen(descriptor, "w") as fh:
                fh.write(SecretBox.generate_key())
    return path.read_text().strip()


def recorded_fingerprint(engine: Engine) -> str | None:
    """The fingerprint the control plane recorded, or None before any process used a key."""
    with _migrated(), engine.connect() as conn:
        return _recorded(conn)


def check(engine: Engine, keys: Sequence[str]) -> str:
    """Refuse unless ``keys`` include the control plane's key; the first process to use a
    key records the newest one's fingerprint. Returns the recorded fingerprint.

    SecretKeyMismatchError (one line, both fingerprints) for another key, or for a first key
    that cannot decrypt the secrets already stored (a control plane older than the record).
    """
    newest = fingerprint(keys[0])
    with _migrated(), engine.begin() as conn:
        recorded = _recorded(conn)
        if recorded is None:
            _refuse_unless_decrypts(conn, SecretBox(list(keys)), newest)
            conn.execute(
                text(
                    "INSERT INTO secret_key_fingerprint (id, fingerprint) VALUES (1, :f) "
                    "ON CONFLICT (id) DO NOTHING"
                ),
                {"f": newest},
            )
            recorded = _recorded(conn)
    assert recorded is not None
    refuse_unless_held(recorded, keys)
    return recorded


def refuse_unless_held(recorded: str, keys: Sequence[str]) -> None:
    """SecretKeyMismatchError, in one line naming both fingerprints, unless one of ``keys``
    (at any position) is the recorded one."""
    held = [fingerprint(key) for key in keys]
    if recorded not in held:
        raise SecretKeyMismatchError(
            f"PROVISION_SECRET_KEY ({', '.join(held)}) is not the control plane's key ({recorded}); "
            "set it to the key the control plane's secrets are encrypted with"
        )


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a rotation is through one table."""

    table: str
    done: int
    total: int


def rotate(
    engine: Engine,
    box: SecretBox,
    newest: str,
    *,
    batch_size: int = 100,
    on_progress: Callable[[Progress], None] = lambda _: None,
) -> int:
    """Every stored secret re-encrypted under the newest key (``box`` holds the keys, newest
    first), a batch of rows per transaction, then ``newest``'s fingerprint recorded. Safe to
    run again after any failure: the old keys still decrypt what was not reached. Returns how
    many secrets were re-encrypted; UndecryptableError if one decrypts under none of the keys."""
    rotated = 0
    with _migrated():
        for encrypted in ENCRYPTED:
            rotated += _rotate_table(engine, box, encrypted, batch_size, on_progress)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO secret_key_fingerprint (id, fingerprint) VALUES (1, :f) "
                    "ON CONFLICT (id) DO UPDATE SET fingerprint = excluded.fingerprint, rotated_at = now()"
                ),
                {"f": fingerprint(newest)},
            )
    return rotated


def _rotate_table(
    engine: Engine,
    box: SecretBox,
    encrypted: EncryptedColumns,
    batch_size: int,
    on_progress: Callable[[Progress], None],
) -> int:
    table, key, columns = encrypted.table, encrypted.key, encrypted.columns
    any_set = " OR ".join(f"{c} IS NOT NULL" for c in columns)
    with engine.connect() as conn:
        total = int(conn.execute(text(f"SELECT count(*) FROM {table} WHERE {any_set}")).scalar_one())
    done, after = 0, ""
    on_progress(Progress(table, 0, total))
    while True:
        with engine.begin() as conn:
            rows = conn.execute(
                text(
                    f"SELECT {key}, {', '.join(columns)} FROM {table} WHERE {key} > :after AND ({any_set}) "
                    f"ORDER BY {key} LIMIT :n FOR UPDATE"
                ),
                {"after": after, "n": batch_size},
            ).all()
            for row in rows:
                update = reencrypted(box, {c: getattr(row, c) for c in columns})
                assignments = ", ".join(f"{c} = :new_{c}" for c in update)
                conn.execute(
                    text(f"UPDATE {table} SET {assignments} WHERE {key} = :key"),
                    {"key": getattr(row, key), **{f"new_{c}": v for c, v in update.items()}},
                )
                done += len(update)
        if not rows:
            break
        after = str(getattr(rows[-1], key))
        on_progress(Progress(table, done, total))
    return done


def reencrypted(box: SecretBox, values: Mapping[str, str | None]) -> dict[str, str]:
    """Each secret of a row (None: absent) encrypted again under the box's newest key."""
    return {column: box.rotate(token) for column, token in values.items() if token is not None}


def _recorded(conn: Connection) -> str | None:
    found = conn.execute(select(tables.secret_key_fingerprint.c.fingerprint)).scalar_one_or_none()
    return str(found) if found is not None else None


def _refuse_unless_decrypts(conn: Connection, box: SecretBox, newest: str) -> None:
    """A control plane with secrets but no record (they predate it): the first key recorded
    must be theirs, or it would lock every other process out of them."""
    for encrypted in ENCRYPTED:
        column = encrypted.columns[0]
        token = conn.execute(
            text(f"SELECT {column} FROM {encrypted.table} WHERE {column} IS NOT NULL LIMIT 1")
        ).scalar_one_or_none()
        if token is None:
            continue
        try:
            box.decrypt(str(token))
        except ValueError:
            raise SecretKeyMismatchError(
                f"PROVISION_SECRET_KEY ({newest}) does not decrypt the secrets already stored in "
                f"{encrypted.table} (no fingerprint recorded yet); set it to their key"
            ) from None


@contextmanager
def _migrated() -> Iterator[None]:
    """ConfigurationError, in one line, when the fingerprint table is missing (not migrated)."""
    try:
        yield
    except ProgrammingError as exc:
        if "secret_key_fingerprint" not in str(exc.orig):
            raise
        raise ConfigurationError(
            "the control-plane database has no secret_key_fingerprint table; run `provision migrate`"
        ) from None
