"""What the control plane's stores share: the step row's columns and how a row maps to a
:class:`StepRow`, the ``SET`` clause of each status a step moves to, the reads every store
makes inside its own transactions, and the wrapper that reports a database that does not
answer as :class:`StoreUnavailableError`."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Connection, RowMapping, text
from sqlalchemy import exc as sa_exc

from shared.classify import classify
from shared.domain.errors import StoreUnavailableError
from shared.domain.records import ProjectRecord, Snapshot, StepRow
from shared.domain.steps import STEP_NAMES, StepStatus

S = StepStatus

# A consumer re-claiming its own running step (it could not record the outcome while the
# database was away) spends no attempt; a take-over of a dead consumer's lease does.
SET_CLAUSES: Mapping[StepStatus, str] = {
    S.RUNNING: """
        started_at = now(), completed_at = NULL,
        attempt = attempt + CASE WHEN status = 'running' AND lease_owner = :owner THEN 0 ELSE 1 END,
        retry_count = retry_count
            + CASE WHEN status = 'running' AND lease_owner IS DISTINCT FROM :owner THEN 1 ELSE 0 END,
        lease_owner = :owner,
        lease_expires_at = now() + make_interval(secs => :lease_seconds)""",
    S.SUCCESS: """
        completed_at = now(), result = CAST(:result AS jsonb),
        lease_owner = NULL, lease_expires_at = NULL""",
    S.FAILED: """
        completed_at = now(), error_message = :error_message,
        error_details = CAST(:error_details AS jsonb),
        lease_owner = NULL, lease_expires_at = NULL""",
    # The last attempt's timing and error stay visible until the next claim; a replay
    # gives the step a fresh attempt budget.
    S.PENDING: """
        retry_count = retry_count + 1, replay_count = replay_count + :replay,
        attempt = CASE WHEN :replay = 1 THEN 0 ELSE attempt END""",
    S.SKIPPED: """
        started_at = coalesce(started_at, now()), completed_at = now(),
        result = CAST(:result AS jsonb)""",
    S.CANCELLED: """
        completed_at = now(), lease_owner = NULL, lease_expires_at = NULL""",
}


def step_columns(alias: str = "") -> str:
    """The step row's columns (prefixed by ``alias``), and whether its lease has expired."""
    p = f"{alias}." if alias else ""
    names = [
        "id",
        "project_id",
        "step_name",
        "position",
        "status",
        "started_at",
        "completed_at",
        "error_message",
        "error_details",
        "retry_count",
        "replay_count",
        "attempt",
        "lease_owner",
        "lease_expires_at",
        "result",
        "created_at",
        "updated_at",
    ]
    return ", ".join(p + n for n in names) + f", ({p}lease_expires_at < now()) AS lease_expired"


STEP_COLUMNS = step_columns()

PROJECT_COLUMNS = (
    "project_id, correlation_id, request, request_hash, created_at, ready_at, "
    "deprovision_correlation_id, deprovision_requested_at, deprovision_reason, deleted_at, "
    "purge_after, purged_at, restored_at, requested_by, deprovision_requested_by"
)


def to_row(mapping: RowMapping | Mapping[str, Any]) -> StepRow:
    """The step row a result row holds (extra columns ignored)."""
    values = {name: mapping[name] for name in StepRow.__dataclass_fields__ if name in mapping}
    values["status"] = StepStatus(values["status"])
    values["lease_expired"] = bool(values.get("lease_expired"))
    return StepRow(**values)


P = ParamSpec("P")
R = TypeVar("R")


def unavailable_as_error(method: Callable[P, R]) -> Callable[P, R]:
    """Report a database that does not answer as StoreUnavailableError, so a consumer can
    tell "the control plane is away" (wait, spend nothing) from a step's own failure."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
            raise StoreUnavailableError(classify(exc).message) from exc

    return wrapper


def read_project(conn: Connection, project_id: str, *, lock: bool = False) -> ProjectRecord | None:
    """The project's record (locked ``FOR UPDATE`` when ``lock``), or None."""
    row = (
        conn.execute(
            text(
                f"SELECT {PROJECT_COLUMNS} FROM projects WHERE project_id = :p"
                + (" FOR UPDATE" if lock else "")
            ),
            {"p": project_id},
        )
        .mappings()
        .first()
    )
    return ProjectRecord(**row) if row is not None else None


def read_step(conn: Connection, project_id: str, step_name: str) -> StepRow | None:
    """One step's row, or None."""
    row = (
        conn.execute(
            text(f"SELECT {STEP_COLUMNS} FROM provisioning_steps WHERE project_id = :p AND step_name = :s"),
            {"p": project_id, "s": step_name},
        )
        .mappings()
        .first()
    )
    return to_row(row) if row is not None else None


def read_steps(conn: Connection, project_id: str) -> list[StepRow]:
    """The project's step rows in step order."""
    rows = conn.execute(
        text(f"SELECT {STEP_COLUMNS} FROM provisioning_steps WHERE project_id = :p ORDER BY position"),
        {"p": project_id},
    ).mappings()
    return [to_row(r) for r in rows]


def read_snapshot(conn: Connection, project_id: str) -> Snapshot:
    """The project's record and all its step rows, read on ``conn`` (in its transaction)."""
    return Snapshot(read_project(conn, project_id), read_steps(conn, project_id))


def insert_steps(
    conn: Connection, project_id: str, first_position: int = 1, names: tuple[str, ...] = STEP_NAMES
) -> None:
    """Pending rows for ``names`` from ``first_position`` on; rows that exist are left as they are."""
    conn.execute(
        text(
            """
            INSERT INTO provisioning_steps (project_id, step_name, position)
            SELECT :p, name, position + :first - 1 FROM unnest(CAST(:names AS text[]))
                WITH ORDINALITY AS s(name, position)
            ON CONFLICT (project_id, step_name) DO NOTHING
            """
        ),
        {"p": project_id, "names": list(names), "first": first_position},
    )


def db_now(conn: Connection) -> datetime:
    """The database's clock (its transaction's ``now()``)."""
    now = conn.execute(text("SELECT now()")).scalar_one()
    assert isinstance(now, datetime)
    return now
