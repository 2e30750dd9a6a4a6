"""The local PostgreSQL clusters' shared superuser password file, made by whoever asks first."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from tooling.infra.postgres import LocalPostgres


def test_clusters_asking_at_once_all_get_the_one_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight clusters asking for the password at the same instant read one non-empty password,
    from a file of mode 0600, with no draft left beside it (a reader once saw it empty)."""
    monkeypatch.setattr(LocalPostgres, "server_owner", lambda self: None)
    password_file = tmp_path / "state" / "postgres.password"
    clusters = [LocalPostgres(tmp_path / f"pg{i}", 5000 + i, password_file) for i in range(8)]
    start = threading.Barrier(len(clusters))
    seen: list[str] = []

    def ask(cluster: LocalPostgres) -> None:
        start.wait()
        seen.append(cluster.password())

    threads = [threading.Thread(target=ask, args=(c,)) for c in clusters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(seen) == 8 and len(set(seen)) == 1 and seen[0]
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert [p.name for p in password_file.parent.iterdir()] == ["postgres.password"]
