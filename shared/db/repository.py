"""The step table's state machine and the project records, enforced in SQL.

Every transition is one compare-and-set ``UPDATE ... WHERE status = ANY(:from)``: two
consumers racing on a step cannot both win, and nothing is decided on a stale read.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, RowMapping, text
from sqlalchemy import exc as sa_exc

from shared.classify import classify
from shared.clusters import ClusterMap
from shared.domain.errors import InvalidTransitionError, StoreUnavailableError
from shared.domain.events import ProvisionProjectPayload
from shared.domain.records import (
    ALLOWED_TRANSITIONS,
    Claim,
    ClusterFill,
    ProjectOverview,
    ProjectRecord,
    Registration,
    RestoreRefusedError,
    Snapshot,
    StepRow,
    StepTransition,
    StrandRule,
    request_hash,
    restore_refusal,
)
from shared.domain.steps import (
    PLACING_STEP,
    PURGE_STEP,
    REVERSE_STEP_NAMES,
    REVERSE_STEPS,
    STEP_NAMES,
    STEPS,
    Chain,
    StepStatus,
    chain_start,
    step_by_name,
)

_REMOVAL_STEP_NAMES = (*REVERSE_STEP_NAMES, PURGE_STEP.name)
"""The rows a deprovisioning adds: the reverse chain's (positions 8-14), then the purge's (15)."""

S = StepStatus

# A consumer re-claiming its own running step (it could not record the outcome while the
# database was away) spends no attempt; a take-over of a dead consumer's lease does.
_SET_CLAUSES: Mapping[StepStatus, str] = {
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


def _step_columns(alias: str = "") -> str:
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


_STEP_COLUMNS = _step_columns()


_PROJECT_COLUMNS = (
    "project_id, correlation_id, request, request_hash, created_at, ready_at, "
    "deprovision_correlation_id, deprovision_requested_at, deprovision_reason, deleted_at, "
    "purge_after, purged_at, restored_at"
)


# The stage of every project in one pass, by the rules of shared.domain.steps.derive_stage: once
# reverse rows exist, a failed one (or a failed purge) FAILED, all the reverse chain's done
# DELETED (CANCELLED if never ready) whatever the purge's status, else
# DEPROVISIONING; before that, no steps INITIALIZING, a failed step FAILED, all done COMPLETED,
# all pending INITIALIZING, else the first step not done.
_OVERVIEW = f"""
    WITH agg AS (
        SELECT p.project_id, p.created_at, p.ready_at,
               max(s.updated_at) AS last_change,
               count(s.id) AS n,
               count(s.id) FILTER (WHERE s.position > {len(STEPS)}) AS reverse_n,
               coalesce(bool_or(s.status = 'failed'), false) AS failed,
               coalesce(bool_or(s.status = 'failed') FILTER (WHERE s.position > {len(STEPS)}), false)
                   AS reverse_failed,
               coalesce(bool_and(s.status IN ('success', 'skipped')), false) AS all_done,
               coalesce(bool_and(s.status IN ('success', 'skipped'))
                        FILTER (WHERE s.position > {len(STEPS)} AND s.position < {PURGE_STEP.position}),
                        false) AS reverse_done,
               coalesce(bool_and(s.status = 'pending'), false) AS all_pending,
               (array_agg(s.step_name ORDER BY s.position)
                    FILTER (WHERE s.status NOT IN ('success', 'skipped')))[1] AS current_step,
               coalesce(bool_or(s.status = 'running' AND s.lease_expires_at < now()), false) AS stuck
        FROM projects p LEFT JOIN provisioning_steps s ON s.project_id = p.project_id
        GROUP BY p.project_id, p.created_at, p.ready_at
    ), frontier AS (
        -- The first step not done of the chain the project is on (the purge excluded: the
        -- purge sweep wakes it when due), and whether it is stranded.
        SELECT DISTINCT ON (s.project_id) s.project_id, s.id AS step_id,
               s.status = 'pending' AND a.last_change < now() - make_interval(secs =>
                   greatest(:lease, least(:rmax, :rbase * power(2, greatest(s.attempt, 1) - 1))
                            * (1 + :jitter)) + :slack) AS stranded
        FROM provisioning_steps s JOIN agg a ON a.project_id = s.project_id
        WHERE s.status NOT IN ('success', 'skipped', 'cancelled')
          AND s.position < {PURGE_STEP.position}
          AND (s.position > {len(STEPS)}) = (a.reverse_n > 0)
        ORDER BY s.project_id, s.position
    ), staged AS (
        SELECT agg.project_id, created_at, last_change, stuck,
               coalesce(f.stranded, false) AS stranded, f.step_id,
               CASE WHEN n = 0 THEN 'INITIALIZING'
                    WHEN reverse_n > 0 THEN
                        CASE WHEN reverse_failed THEN 'FAILED'
                             WHEN reverse_done AND ready_at IS NOT NULL THEN 'DELETED'
                             WHEN reverse_done THEN 'CANCELLED'
                             ELSE 'DEPROVISIONING' END
                    WHEN failed THEN 'FAILED'
                    WHEN all_done THEN 'COMPLETED'
                    WHEN all_pending THEN 'INITIALIZING'
                    ELSE current_step END AS stage_key
        FROM agg LEFT JOIN frontier f ON f.project_id = agg.project_id
    )
"""


_MEDIAN_STEP_SECONDS = text(
    """
    SELECT step_name,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - started_at))
    FROM (
        SELECT step_name, started_at, completed_at,
               row_number() OVER (PARTITION BY step_name ORDER BY completed_at DESC) AS recent
        FROM provisioning_steps
        WHERE status = 'success' AND started_at IS NOT NULL AND completed_at IS NOT NULL
          AND completed_at > now() - interval '1 day'
    ) AS done
    WHERE recent <= :sample
    GROUP BY step_name
    """
)


def _row(mapping: RowMapping | Mapping[str, Any]) -> StepRow:
    values = {name: mapping[name] for name in StepRow.__dataclass_fields__ if name in mapping}
    values["status"] = StepStatus(values["status"])
    values["lease_expired"] = bool(values.get("lease_expired"))
    return StepRow(**values)


P = ParamSpec("P")
R = TypeVar("R")


def _unavailable_as_error(method: Callable[P, R]) -> Callable[P, R]:
    """Report a database that does not answer as StoreUnavailableError, so a consumer can
    tell "the control plane is away" (wait, spend nothing) from a step's own failure."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
            raise StoreUnavailableError(classify(exc).message) from exc

    return wrapper


# Fragments of the claim statement (``s`` the step row, ``p`` its project).
_CLAIMABLE = (
    "(s.status = 'pending' OR (s.status = 'running' "
    "AND (s.lease_expires_at < now() OR s.lease_owner = :owner)))"
)
_EARLIER_DONE = (
    "NOT EXISTS (SELECT 1 FROM provisioning_steps AS e WHERE e.project_id = s.project_id "
    "AND e.position >= :first_position AND e.position < s.position "
    "AND e.status NOT IN ('success', 'skipped'))"
)
_SKIPS = (
    "(s.status = 'pending' AND CAST(:skip_service AS text) IS NOT NULL "
    "AND p.request -> 'services' ->> CAST(:skip_service AS text) = 'false')"
)
# A provisioning step: the project is registered under this request and not fenced by a
# deprovisioning. A reverse step: the deprovisioning is registered under this request, and its
# service's provisioning step is not running under a live lease (it may still be creating what
# this step would remove: the reverse step waits for it to end, then undoes it).
_CHAIN_CONDITION = {
    Chain.PROVISIONING: (
        "p.correlation_id = :correlation_id AND p.request IS NOT NULL AND p.deprovision_requested_at IS NULL"
    ),
    Chain.DEPROVISIONING: (
        "p.deprovision_correlation_id = :correlation_id AND NOT EXISTS ("
        "SELECT 1 FROM provisioning_steps AS f WHERE f.project_id = s.project_id "
        "AND f.step_name = :counterpart AND f.status = 'running' AND f.lease_expires_at >= now())"
    ),
    # The purge: the project is deleted under this deprovisioning, not purged, and its
    # retention window has passed (the record decides, whatever the trigger says).
    Chain.PURGE: (
        "p.deprovision_correlation_id = :correlation_id AND p.deleted_at IS NOT NULL "
        "AND p.purged_at IS NULL AND p.purge_after <= now()"
    ),
}


def _claim_sql(chain: Chain) -> str:
    return f"""
WITH claimed AS (
    UPDATE provisioning_steps AS s
    SET status = CASE WHEN {_SKIPS} THEN 'skipped' ELSE 'running' END,
        updated_at = now(),
        started_at = CASE WHEN {_SKIPS} THEN coalesce(s.started_at, now()) ELSE now() END,
        completed_at = CASE WHEN {_SKIPS} THEN now() END,
        result = CASE WHEN {_SKIPS} THEN CAST(:skip_result AS jsonb) ELSE s.result END,
        attempt = s.attempt
            + CASE WHEN {_SKIPS} OR (s.status = 'running' AND s.lease_owner = :owner) THEN 0 ELSE 1 END,
        retry_count = s.retry_count
            + CASE WHEN s.status = 'running' AND s.lease_owner IS DISTINCT FROM :owner THEN 1 ELSE 0 END,
        lease_owner = CASE WHEN {_SKIPS} THEN NULL ELSE CAST(:owner AS text) END,
        lease_expires_at = CASE WHEN {_SKIPS} THEN NULL
                                ELSE now() + make_interval(secs => :lease_seconds) END
    FROM projects AS p
    WHERE s.project_id = :p AND s.step_name = :s AND p.project_id = s.project_id
      AND {_CHAIN_CONDITION[chain]}
      AND {_CLAIMABLE} AND {_EARLIER_DONE}
    RETURNING {_step_columns("s")}, coalesce(p.request, '{{}}'::jsonb) AS project_request
)
SELECT claimed.*,
       (SELECT coalesce(jsonb_agg(e.result ORDER BY e.position), '[]'::jsonb)
        FROM provisioning_steps AS e
        WHERE e.project_id = claimed.project_id AND e.position >= :first_position
          AND e.position < claimed.position AND e.result IS NOT NULL) AS earlier_results,
       (SELECT t.cluster FROM tenant_placements AS t WHERE t.project_id = claimed.project_id) AS placement
FROM claimed
"""


# Placement: the least filled cluster of the region with room (fill = live tenants / capacity,
# ties in map order). Placements of one region are serialised by an advisory lock held to the
# end of the claim's transaction, so two claims never both take a cluster's last slot. A
# project placed already keeps its cluster.
_PLACE = """
WITH load AS (
    SELECT t.cluster, count(*) AS used
    FROM tenant_placements AS t JOIN projects AS p ON p.project_id = t.project_id
    WHERE p.deleted_at IS NULL AND t.project_id <> :p
    GROUP BY t.cluster
), candidates AS (
    SELECT c.name, c.capacity, coalesce(l.used, 0) AS used, c.ord
    FROM unnest(CAST(:names AS text[]), CAST(:capacities AS int[])) WITH ORDINALITY AS c(name, capacity, ord)
    LEFT JOIN load AS l ON l.cluster = c.name
    WHERE coalesce(l.used, 0) < c.capacity
)
INSERT INTO tenant_placements (project_id, cluster)
SELECT :p, name FROM candidates ORDER BY used::float8 / capacity, ord LIMIT 1
ON CONFLICT (project_id) DO UPDATE SET cluster = tenant_placements.cluster
RETURNING cluster
"""


_CLAIM = {chain: _claim_sql(chain) for chain in Chain}


DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600.0
"""How long a deleted project's archive is kept, restorable, before it is purged."""


class StepRepository:
    """Projects and their steps, over one engine; ``clusters`` is where tenants are placed
    (the one-cluster shorthand when not given: ``default``, every region, no limit);
    ``retention_seconds`` how long a deleted project stays restorable; ``strand_rule`` when a
    pending step counts as stranded."""

    def __init__(
        self,
        engine: Engine,
        clusters: ClusterMap | None = None,
        *,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
        strand_rule: StrandRule | None = None,
    ) -> None:
        self.engine = engine
        self.clusters = clusters or ClusterMap.single("", capacity=2**31 - 1)
        self.retention_seconds = retention_seconds
        self.strand_rule = strand_rule or StrandRule()

    # --- projects -------------------------------------------------------------------------

    @_unavailable_as_error
    def register_request(
        self,
        payload: ProvisionProjectPayload,
        correlation_id: uuid.UUID,
        *,
        connection: Connection | None = None,
    ) -> tuple[Registration, ProjectRecord]:
        """Record a project and its seven pending steps, unless it is already known.

        Runs in ``connection``'s transaction when given (so the caller can add an outbox
        row atomically), else in its own.
        """
        if connection is None:
            with self.engine.begin() as conn:
                return self.register_request(payload, correlation_id, connection=conn)
        digest = request_hash(payload)
        inserted = connection.execute(
            text(
                """
                INSERT INTO projects (project_id, correlation_id, request, request_hash)
                VALUES (:project_id, :correlation_id, CAST(:request AS jsonb), :hash)
                ON CONFLICT (project_id) DO UPDATE
                    SET correlation_id = EXCLUDED.correlation_id,
                        request = EXCLUDED.request,
                        request_hash = EXCLUDED.request_hash
                    WHERE projects.request IS NULL AND projects.deprovision_requested_at IS NULL
                RETURNING project_id
                """
            ),
            {
                "project_id": payload.project_id,
                "correlation_id": correlation_id,
                "request": payload.model_dump_json(),
                "hash": digest,
            },
        ).first()
        if inserted is not None:
            self._initialize(connection, payload.project_id)
            record = self._project(connection, payload.project_id)
            assert record is not None
            return Registration.NEW, record
        record = self._project(connection, payload.project_id, lock=True)
        assert record is not None
        if record.fenced:
            return Registration.REMOVED, record
        if record.request_hash == digest:
            return Registration.DUPLICATE, record
        return Registration.CONFLICT, record

    @_unavailable_as_error
    def project(self, project_id: str) -> ProjectRecord | None:
        """The project's record, or None."""
        with self.engine.connect() as conn:
            return self._project(conn, project_id)

    def _project(self, conn: Connection, project_id: str, *, lock: bool = False) -> ProjectRecord | None:
        row = (
            conn.execute(
                text(
                    f"SELECT {_PROJECT_COLUMNS} FROM projects WHERE project_id = :p"
                    + (" FOR UPDATE" if lock else "")
                ),
                {"p": project_id},
            )
            .mappings()
            .first()
        )
        return ProjectRecord(**row) if row is not None else None

    @_unavailable_as_error
    def overview(
        self, stage_keys: list[str] | None = None, *, limit: int = 50, offset: int = 0
    ) -> tuple[list[ProjectOverview], dict[str, int]]:
        """Projects at one of ``stage_keys`` (all when None), the longest unchanged first, at
        most ``limit`` after skipping ``offset``; and how many projects stand at each stage key."""
        rule = self.strand_rule.params()
        with self.engine.connect() as conn:
            counts = {
                str(key): int(n)
                for key, n in conn.execute(
                    text(_OVERVIEW + "SELECT stage_key, count(*) FROM staged GROUP BY 1"), rule
                )
            }
            rows = conn.execute(
                text(
                    _OVERVIEW + "SELECT project_id, stage_key, created_at, last_change, stuck, stranded "
                    "FROM staged "
                    "WHERE CAST(:keys AS text[]) IS NULL OR stage_key = ANY(CAST(:keys AS text[])) "
                    "ORDER BY last_change ASC NULLS FIRST, project_id LIMIT :limit OFFSET :offset"
                ),
                {"keys": stage_keys, "limit": limit, "offset": offset} | rule,
            ).all()
        return [ProjectOverview(*row) for row in rows], counts

    @_unavailable_as_error
    def stranded(self, project_id: str | None = None, *, limit: int = 1000) -> list[tuple[str, StepRow]]:
        """The stranded steps (of ``project_id``, or of every project), oldest change first:
        each project's next step ``pending`` past every wait the record allows (see
        :class:`StrandRule`)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    _OVERVIEW + f"SELECT staged.project_id AS stranded_project, {_step_columns('s')} "
                    "FROM staged JOIN provisioning_steps AS s ON s.id = staged.step_id "
                    "WHERE staged.stranded AND (CAST(:p AS text) IS NULL OR staged.project_id = :p) "
                    "ORDER BY staged.last_change, staged.project_id LIMIT :limit"
                ),
                {"p": project_id, "limit": limit} | self.strand_rule.params(),
            ).mappings()
            return [(str(r["stranded_project"]), _row(r)) for r in rows]

    def mark_redriven(self, project_id: str, step_name: str, attempt: int, *, connection: Connection) -> bool:
        """Record, in ``connection``'s transaction, that a stranded step's input is being sent
        again: its change time now (so it is not stranded while the message travels) and one
        more replay (the loop guard counts it). False when the step moved meanwhile (no longer
        ``pending`` at ``attempt``): then nothing is to be sent."""
        moved = connection.execute(
            text(
                "UPDATE provisioning_steps SET updated_at = now(), replay_count = replay_count + 1 "
                "WHERE project_id = :p AND step_name = :s AND status = 'pending' AND attempt = :a "
                "RETURNING 1"
            ),
            {"p": project_id, "s": step_name, "a": attempt},
        ).first()
        return moved is not None

    @_unavailable_as_error
    def mark_ready(self, project_id: str) -> datetime:
        """Mark the project ready (once); returns when it became ready."""
        with self.engine.begin() as conn:
            ready_at = conn.execute(
                text(
                    "UPDATE projects SET ready_at = coalesce(ready_at, now()) "
                    "WHERE project_id = :p RETURNING ready_at"
                ),
                {"p": project_id},
            ).scalar_one_or_none()
        if ready_at is None:
            raise LookupError(f"project {project_id!r} not found")
        assert isinstance(ready_at, datetime)
        return ready_at

    @_unavailable_as_error
    def register_deprovisioning(
        self,
        project_id: str,
        correlation_id: uuid.UUID,
        *,
        reason: str | None = None,
        create: bool = False,
        purge_now: bool = False,
        connection: Connection | None = None,
    ) -> tuple[Registration, ProjectRecord] | None:
        """Record that the project is to be removed, unless that is already recorded: set the
        fence, cancel its provisioning steps that are still ``pending`` and add the seven
        reverse steps and the purge step, in one transaction (``connection``'s when given).
        ``purge_now`` ends the retention window at once (asked again of a project already
        deleted, too), so the purge follows the reverse chain.

        ``NEW`` the first time, ``DUPLICATE`` afterwards (the record keeps the first
        request's id). None when the project is unknown, unless ``create`` records a bare one
        (for an orphan found by ``provision reconcile``: no request, only the name).
        """
        if connection is None:
            with self.engine.begin() as conn:
                return self.register_deprovisioning(
                    project_id,
                    correlation_id,
                    reason=reason,
                    create=create,
                    purge_now=purge_now,
                    connection=conn,
                )
        if create:
            connection.execute(
                text("INSERT INTO projects (project_id) VALUES (:p) ON CONFLICT DO NOTHING"),
                {"p": project_id},
            )
        # Locked first: a request registering the project concurrently is either committed
        # (and fenced below) or not yet visible (and the project is unknown): never seen
        # unfenced after the fence was missed.
        if self._project(connection, project_id, lock=True) is None:
            return None
        fenced = connection.execute(
            text(
                """
                UPDATE projects
                SET deprovision_correlation_id = :correlation_id,
                    deprovision_requested_at = now(), deprovision_reason = :reason
                WHERE project_id = :p AND deprovision_correlation_id IS NULL
                RETURNING project_id
                """
            ),
            {"p": project_id, "correlation_id": correlation_id, "reason": reason},
        ).first()
        if fenced is not None:
            connection.execute(
                text(
                    f"""
                    UPDATE provisioning_steps
                    SET status = 'cancelled', updated_at = now(), {_SET_CLAUSES[S.CANCELLED]}
                    WHERE project_id = :p AND position <= :last AND status = 'pending'
                    """
                ),
                {"p": project_id, "last": STEPS[-1].position},
            )
            self._initialize(connection, project_id, REVERSE_STEPS[0].position, _REMOVAL_STEP_NAMES)
        if purge_now:
            self._purge_now(connection, project_id)
        record = self._project(connection, project_id)
        if record is None:
            return None
        return (Registration.NEW if fenced is not None else Registration.DUPLICATE), record

    @_unavailable_as_error
    def mark_deleted(self, project_id: str) -> datetime:
        """Set the project's tombstone (once) and the end of its retention window (once: the
        retention from now, unless a purge now was asked), and cancel whatever of its
        provisioning chain never finished (a step left ``running`` by a consumer that died, or
        ``pending`` after a retry): nothing of the old chain stays claimable. Returns when it
        was deleted."""
        with self.engine.begin() as conn:
            deleted_at = conn.execute(
                text(
                    "UPDATE projects SET deleted_at = coalesce(deleted_at, now()), "
                    "purge_after = coalesce(purge_after, now() + make_interval(secs => :retention)) "
                    "WHERE project_id = :p AND deprovision_requested_at IS NOT NULL RETURNING deleted_at"
                ),
                {"p": project_id, "retention": self.retention_seconds},
            ).scalar_one_or_none()
            if deleted_at is None:
                raise LookupError(f"project {project_id!r} has no deprovisioning request")
            conn.execute(
                text(
                    f"""
                    UPDATE provisioning_steps
                    SET status = 'cancelled', updated_at = now(), {_SET_CLAUSES[S.CANCELLED]}
                    WHERE project_id = :p AND position <= :last AND status IN ('pending', 'running')
                    """
                ),
                {"p": project_id, "last": STEPS[-1].position},
            )
        assert isinstance(deleted_at, datetime)
        return deleted_at

    @_unavailable_as_error
    def purge_now(self, project_id: str) -> ProjectRecord | None:
        """End the retention window of a project being (or already) deleted at once, so its
        purge is queued as soon as its reverse chain is done; None unless it is being removed
        and not purged yet. A purge already queued for a later time is queued again now."""
        with self.engine.begin() as conn:
            return self._purge_now(conn, project_id)

    def _purge_now(self, conn: Connection, project_id: str) -> ProjectRecord | None:
        moved = conn.execute(
            text(
                "UPDATE projects SET purge_after = least(coalesce(purge_after, now()), now()), "
                "purge_triggered_at = CASE WHEN purge_after > now() THEN NULL ELSE purge_triggered_at END "
                "WHERE project_id = :p AND deprovision_requested_at IS NOT NULL AND purged_at IS NULL "
                "RETURNING project_id"
            ),
            {"p": project_id},
        ).first()
        return self._project(conn, project_id) if moved is not None else None

    @_unavailable_as_error
    def queue_due_purges(
        self,
        queue: Callable[[Connection, str, uuid.UUID], None],
        *,
        requeue_after_seconds: float,
        limit: int = 100,
    ) -> list[str]:
        """The deleted projects whose retention window has passed and whose purge is pending,
        not yet queued (or queued ``requeue_after_seconds`` ago with the purge still pending:
        its trigger was lost), each handed to ``queue`` (which writes the trigger to the outbox)
        and marked queued, in one transaction. Concurrent callers skip each other's rows."""
        with self.engine.begin() as conn:
            due = conn.execute(
                text(
                    """
                    SELECT p.project_id, p.deprovision_correlation_id FROM projects AS p
                    JOIN provisioning_steps AS s ON s.project_id = p.project_id AND s.step_name = :purge
                    WHERE p.deleted_at IS NOT NULL AND p.purged_at IS NULL AND p.purge_after <= now()
                      AND s.status = 'pending'
                      AND (p.purge_triggered_at IS NULL
                           OR p.purge_triggered_at < now() - make_interval(secs => :requeue))
                    ORDER BY p.purge_after LIMIT :limit
                    FOR UPDATE OF p SKIP LOCKED
                    """
                ),
                {"purge": PURGE_STEP.name, "requeue": requeue_after_seconds, "limit": limit},
            ).all()
            for project_id, correlation_id in due:
                queue(conn, str(project_id), correlation_id)
            if due:
                conn.execute(
                    text("UPDATE projects SET purge_triggered_at = now() WHERE project_id = ANY(:ids)"),
                    {"ids": [str(row[0]) for row in due]},
                )
        return [str(row[0]) for row in due]

    @_unavailable_as_error
    def schedule_repair(
        self, project_id: str, step_names: Sequence[str], *, note: str, connection: Connection
    ) -> list[StepRow]:
        """Send done provisioning steps of a live project back to ``pending`` so that they run
        again (``success -> pending``, the one way a done step moves: a repair, when the work it
        recorded is missing), in ``connection``'s transaction, with a fresh attempt budget and
        ``note`` as the reason shown. A project being deprovisioned, or one without a request,
        is never touched; a step not ``success`` (already pending again: a repair under way) is
        left as it is. The rows moved, in step order (none: nothing to re-drive)."""
        record = self._project(connection, project_id, lock=True)
        if record is None or record.fenced or record.request is None:
            return []
        rows = connection.execute(
            text(
                f"""
                UPDATE provisioning_steps
                SET status = 'pending', updated_at = now(), attempt = 0, lease_owner = NULL,
                    lease_expires_at = NULL, error_message = :note,
                    error_details = CAST(:details AS jsonb)
                WHERE project_id = :p AND step_name = ANY(:names) AND status = 'success'
                  AND position <= :last
                RETURNING {_STEP_COLUMNS}
                """
            ),
            {
                "p": project_id,
                "names": list(step_names),
                "note": note,
                "details": json.dumps({"type": "REPAIR", "reason": note}),
                "last": STEPS[-1].position,
            },
        ).mappings()
        return sorted((_row(r) for r in rows), key=lambda r: r.position)

    @_unavailable_as_error
    def mark_purged(self, project_id: str) -> datetime:
        """Record that the project's archive is gone (once); LookupError unless it is deleted."""
        with self.engine.begin() as conn:
            purged_at = conn.execute(
                text(
                    "UPDATE projects SET purged_at = coalesce(purged_at, now()) "
                    "WHERE project_id = :p AND deleted_at IS NOT NULL RETURNING purged_at"
                ),
                {"p": project_id},
            ).scalar_one_or_none()
        if purged_at is None:
            raise LookupError(f"project {project_id!r} is not deleted")
        assert isinstance(purged_at, datetime)
        return purged_at

    @_unavailable_as_error
    def restore(
        self, project_id: str, correlation_id: uuid.UUID, *, connection: Connection | None = None
    ) -> ProjectRecord:
        """Bring a deleted project back within its retention window, in one transaction
        (``connection``'s when given): its provisioning steps ``pending`` again under the new
        request id ``correlation_id`` (the registered request unchanged), its reverse and purge
        rows removed (their history stays in ``step_transitions``), its tombstone and fence
        lifted. The provisioning chain then runs again: the database step renames the archive
        back, and every step makes new credentials where the deletion revoked them.

        RestoreRefusedError, in one line, when the project cannot be restored: unknown, not
        deleted (live, or its reverse chain still running), an orphan with no request, purged,
        being purged, or past its window.
        """
        if connection is None:
            with self.engine.begin() as conn:
                return self.restore(project_id, correlation_id, connection=conn)
        record = self._project(connection, project_id, lock=True)
        purge = self._step(connection, project_id, PURGE_STEP.name)
        refusal = restore_refusal(project_id, record, purge, now=self._now(connection))
        if refusal is not None:
            raise RestoreRefusedError(refusal)
        connection.execute(
            text("DELETE FROM provisioning_steps WHERE project_id = :p AND position > :last"),
            {"p": project_id, "last": STEPS[-1].position},
        )
        connection.execute(
            text(
                """
                UPDATE provisioning_steps
                SET status = 'pending', updated_at = now(), started_at = NULL, completed_at = NULL,
                    error_message = NULL, error_details = NULL, attempt = 0, replay_count = 0,
                    lease_owner = NULL, lease_expires_at = NULL, result = NULL
                WHERE project_id = :p AND position <= :last
                """
            ),
            {"p": project_id, "last": STEPS[-1].position},
        )
        connection.execute(
            text(
                """
                UPDATE projects
                SET correlation_id = :c, deprovision_correlation_id = NULL, deprovision_requested_at = NULL,
                    deprovision_reason = NULL, deleted_at = NULL, purge_after = NULL,
                    purge_triggered_at = NULL, restored_at = now(), restore_count = restore_count + 1
                WHERE project_id = :p
                """
            ),
            {"p": project_id, "c": correlation_id},
        )
        restored = self._project(connection, project_id)
        assert restored is not None
        return restored

    @staticmethod
    def _now(conn: Connection) -> datetime:
        now = conn.execute(text("SELECT now()")).scalar_one()
        assert isinstance(now, datetime)
        return now

    # --- steps ----------------------------------------------------------------------------

    @_unavailable_as_error
    def initialize(self, project_id: str) -> list[StepRow]:
        """Seven pending rows in the seed's order, creating a bare project record if needed.

        Idempotent: rows that exist are left as they are.
        """
        with self.engine.begin() as conn:
            conn.execute(
                text("INSERT INTO projects (project_id) VALUES (:p) ON CONFLICT DO NOTHING"),
                {"p": project_id},
            )
            self._initialize(conn, project_id)
        return self.steps(project_id)

    def _initialize(
        self,
        conn: Connection,
        project_id: str,
        first_position: int = 1,
        names: tuple[str, ...] = STEP_NAMES,
    ) -> None:
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

    @_unavailable_as_error
    def steps(self, project_id: str) -> list[StepRow]:
        """The project's steps in step order (empty if it has none)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    f"SELECT {_STEP_COLUMNS} FROM provisioning_steps WHERE project_id = :p ORDER BY position"
                ),
                {"p": project_id},
            ).mappings()
            return [_row(r) for r in rows]

    @_unavailable_as_error
    def step(self, project_id: str, step_name: str) -> StepRow | None:
        """One step's row, or None."""
        with self.engine.connect() as conn:
            return self._step(conn, project_id, step_name)

    def _step(self, conn: Connection, project_id: str, step_name: str) -> StepRow | None:
        row = (
            conn.execute(
                text(
                    f"SELECT {_STEP_COLUMNS} FROM provisioning_steps WHERE project_id = :p AND step_name = :s"
                ),
                {"p": project_id, "s": step_name},
            )
            .mappings()
            .first()
        )
        return _row(row) if row is not None else None

    @_unavailable_as_error
    def claim(
        self,
        project_id: str,
        step_name: str,
        *,
        correlation_id: uuid.UUID,
        owner: str,
        lease_seconds: float,
        skip_service: str | None = None,
        skip_result: Mapping[str, Any] | None = None,
    ) -> Claim | None:
        """Claim a step for the request ``correlation_id`` in one statement, if the record
        allows it: the project is registered under that request (its provisioning request,
        not fenced by a deprovisioning; or, for a reverse step, its deprovisioning request,
        with the service's provisioning step not running under a live lease), every earlier
        step of the chain is ``success`` or ``skipped``, and the step is ``pending`` (or
        ``running`` under an expired lease, or our own). The step goes ``running``, or
        ``skipped`` when ``skip_service`` is turned off in the registered request.

        Returns the row with the registered request and the earlier steps' stored results,
        or None when the record refuses (read a :meth:`snapshot` to learn why). The
        predecessor check and the reads ride on the claim: no extra round trip.
        """
        step = step_by_name(step_name)
        first = chain_start(step.chain)
        with self.engine.begin() as conn:
            row = (
                conn.execute(
                    text(_CLAIM[step.chain]),
                    {
                        "p": project_id,
                        "s": step_name,
                        "first_position": first.position,
                        "counterpart": step.counterpart.name,
                        "correlation_id": correlation_id,
                        "owner": owner,
                        "lease_seconds": lease_seconds,
                        "skip_service": skip_service,
                        "skip_result": json.dumps(skip_result or {}),
                    },
                )
                .mappings()
                .first()
            )
            if row is None:
                return None
            placement = row["placement"]
            if step is PLACING_STEP and row["status"] == S.RUNNING.value and placement is None:
                placement = self._place(conn, project_id, row["project_request"].get("region"))
        return Claim(
            _row(row), dict(row["project_request"]), list(row["earlier_results"]), placement=placement
        )

    def _place(self, conn: Connection, project_id: str, region: object) -> str | None:
        """Place the project on a cluster of its region with room, in the claim's transaction;
        None when there is none (the step then fails with QUOTA_EXCEEDED)."""
        candidates = self.clusters.for_region(str(region))
        if not candidates:
            return None
        conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended('tenant-placement/' || :region, 0))"),
            {"region": str(region)},
        )
        placed = conn.execute(
            text(_PLACE),
            {
                "p": project_id,
                "names": [c.name for c in candidates],
                "capacities": [c.capacity for c in candidates],
            },
        ).scalar_one_or_none()
        return str(placed) if placed is not None else None

    @_unavailable_as_error
    def cluster_fill(self, region: str | None = None) -> list[ClusterFill]:
        """Every cluster (of ``region``, when given) with its live tenants and capacity."""
        clusters = self.clusters.clusters if region is None else self.clusters.for_region(region)
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT t.cluster, count(*) FROM tenant_placements AS t "
                    "JOIN projects AS p ON p.project_id = t.project_id "
                    "WHERE p.deleted_at IS NULL GROUP BY t.cluster"
                )
            )
            # Not dict(rows): a Result has keys() (its columns), so dict() would index it.
            used = {str(name): int(count) for name, count in rows}
        return [ClusterFill(c.name, c.region, used.get(c.name, 0), c.capacity) for c in clusters]

    @_unavailable_as_error
    def placement(self, project_id: str) -> str | None:
        """The cluster the project is placed on, or None."""
        with self.engine.connect() as conn:
            found = conn.execute(
                text("SELECT cluster FROM tenant_placements WHERE project_id = :p"), {"p": project_id}
            ).scalar_one_or_none()
        return str(found) if found is not None else None

    @_unavailable_as_error
    def record_placement(self, project_id: str, cluster: str, *, connection: Connection | None = None) -> str:
        """Place the project on ``cluster`` unless it is placed already (an orphan found there);
        the cluster it is placed on."""
        if connection is None:
            with self.engine.begin() as conn:
                return self.record_placement(project_id, cluster, connection=conn)
        placed = connection.execute(
            text(
                "INSERT INTO tenant_placements (project_id, cluster) VALUES (:p, :c) "
                "ON CONFLICT (project_id) DO UPDATE SET cluster = tenant_placements.cluster RETURNING cluster"
            ),
            {"p": project_id, "c": cluster},
        ).scalar_one()
        return str(placed)

    @_unavailable_as_error
    def snapshot(self, project_id: str, *, connection: Connection | None = None) -> Snapshot:
        """The project's record and all its step rows, read in one transaction
        (``connection``'s when given)."""
        if connection is None:
            with self.engine.begin() as conn:
                return self.snapshot(project_id, connection=conn)
        project = self._project(connection, project_id)
        rows = connection.execute(
            text(f"SELECT {_STEP_COLUMNS} FROM provisioning_steps WHERE project_id = :p ORDER BY position"),
            {"p": project_id},
        ).mappings()
        return Snapshot(project, [_row(r) for r in rows])

    @_unavailable_as_error
    def transitions(self, project_id: str) -> list[StepTransition]:
        """The project's logged step transitions, in id order (the order they were made)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT id, step_name, position, previous, status, attempt, error_message, "
                    "error_details, at FROM step_transitions WHERE project_id = :p ORDER BY id"
                ),
                {"p": project_id},
            ).all()
        return [StepTransition(*row) for row in rows]

    @_unavailable_as_error
    def last_transition_id(self, project_id: str) -> int:
        """The id of the project's latest logged transition; 0 when it has none."""
        with self.engine.connect() as conn:
            value = conn.execute(
                text("SELECT coalesce(max(id), 0) FROM step_transitions WHERE project_id = :p"),
                {"p": project_id},
            ).scalar_one()
        return int(value)

    @_unavailable_as_error
    def median_step_seconds(self, *, sample: int = 100) -> dict[str, float]:
        """Each step's median duration (seconds) over its latest ``sample`` successes of the
        last day; a step with none is absent."""
        with self.engine.connect() as conn:
            rows = conn.execute(_MEDIAN_STEP_SECONDS, {"sample": sample}).all()
        return {str(name): float(seconds) for name, seconds in rows}

    @_unavailable_as_error
    def transition(
        self,
        project_id: str,
        step_name: str,
        to: StepStatus | str,
        *,
        error_message: str | None = None,
        error_details: Mapping[str, Any] | None = None,
        result: Mapping[str, Any] | None = None,
        owner: str | None = None,
        expected_owner: str | None = None,
        lease_seconds: float = 300.0,
        replay: bool = False,
        connection: Connection | None = None,
    ) -> StepRow:
        """Move a step to ``to`` by compare-and-set, or raise InvalidTransitionError.

        ``expected_owner`` makes success/failed conditional on still holding the lease,
        so a consumer whose lease was taken over cannot overwrite its successor's work.
        """
        if connection is None:
            with self.engine.begin() as conn:
                return self.transition(
                    project_id,
                    step_name,
                    to,
                    error_message=error_message,
                    error_details=error_details,
                    result=result,
                    owner=owner,
                    expected_owner=expected_owner,
                    lease_seconds=lease_seconds,
                    replay=replay,
                    connection=conn,
                )
        target = StepStatus(to)
        sources = [s.value for s in ALLOWED_TRANSITIONS[target]]
        condition = "status = ANY(:sources)"
        if target is S.RUNNING:
            # Take-over: the holder died (lease expired), or it is ourselves again after a
            # failure we could not record while the database was unreachable.
            condition = (
                "(status = ANY(:sources) OR (status = 'running' "
                "AND (lease_expires_at < now() OR lease_owner = :owner)))"
            )
        if expected_owner is not None:
            condition += " AND lease_owner = :expected_owner"
        row = (
            connection.execute(
                text(
                    f"""
                UPDATE provisioning_steps
                SET status = :to, updated_at = now(), {_SET_CLAUSES[target]}
                WHERE project_id = :p AND step_name = :s AND {condition}
                RETURNING {_STEP_COLUMNS}
                """
                ),
                {
                    "to": target.value,
                    "p": project_id,
                    "s": step_name,
                    "sources": sources,
                    "owner": owner,
                    "expected_owner": expected_owner,
                    "lease_seconds": lease_seconds,
                    "result": json.dumps(result) if result is not None else None,
                    "error_message": error_message,
                    "error_details": json.dumps(error_details) if error_details is not None else None,
                    "replay": 1 if replay else 0,
                },
            )
            .mappings()
            .first()
        )
        if row is not None:
            return _row(row)
        current = self._step(connection, project_id, step_name)
        raise InvalidTransitionError(
            project_id, step_name, current.status.value if current else None, target.value
        )

    @_unavailable_as_error
    def renew_lease(
        self,
        project_id: str,
        step_name: str,
        *,
        owner: str,
        lease_seconds: float,
        cancel_if_fenced: bool = True,
    ) -> bool:
        """Extend ``owner``'s live lease on a running step: True when it still holds the step.
        False when the lease ran out (the step may be another's, or its reverse step may have
        gone ahead). Before the work (``cancel_if_fenced``), a provisioning step of a project
        being deprovisioned is not renewed either but recorded ``cancelled``, so it never acts
        and its reverse step need not wait; during the work the lease is kept, so the reverse
        step waits for the work to end and then undoes it."""
        forward = cancel_if_fenced and step_by_name(step_name).chain is Chain.PROVISIONING
        params = {"p": project_id, "s": step_name, "owner": owner, "lease_seconds": lease_seconds}
        ours = "s.status = 'running' AND s.lease_owner = :owner AND s.project_id = :p AND s.step_name = :s"
        with self.engine.begin() as conn:
            if forward:
                conn.execute(
                    text(
                        f"""
                        UPDATE provisioning_steps AS s
                        SET status = 'cancelled', updated_at = now(), {_SET_CLAUSES[S.CANCELLED]}
                        FROM projects AS p
                        WHERE {ours} AND p.project_id = s.project_id
                          AND p.deprovision_requested_at IS NOT NULL
                        """
                    ),
                    params,
                )
            renewed = conn.execute(
                text(
                    f"""
                    UPDATE provisioning_steps AS s
                    SET lease_expires_at = now() + make_interval(secs => :lease_seconds)
                    WHERE {ours} AND s.lease_expires_at >= now()
                    RETURNING s.id
                    """
                ),
                params,
            ).first()
        return renewed is not None

    @_unavailable_as_error
    def record_attempt_failure(
        self,
        project_id: str,
        step_name: str,
        *,
        owner: str,
        error_message: str,
        error_details: Mapping[str, Any],
        final: bool,
    ) -> StepRow | None:
        """Record a failed attempt of a step ``owner`` holds: ``running -> failed``, then
        ``failed -> pending`` unless final, in one transaction.

        None when ``owner`` no longer holds the step (its lease was taken over, or the step
        moved on): the failure is superseded and nothing is written.
        """
        with self.engine.begin() as conn:
            row = (
                conn.execute(
                    text(
                        f"""
                        UPDATE provisioning_steps
                        SET status = 'failed', updated_at = now(), {_SET_CLAUSES[S.FAILED]}
                        WHERE project_id = :p AND step_name = :s AND status = 'running'
                          AND lease_owner = :owner
                        RETURNING {_STEP_COLUMNS}
                        """
                    ),
                    {
                        "p": project_id,
                        "s": step_name,
                        "owner": owner,
                        "error_message": error_message,
                        "error_details": json.dumps(error_details),
                    },
                )
                .mappings()
                .first()
            )
            if row is None:
                return None
            if final:
                return _row(row)
            return self.transition(project_id, step_name, S.PENDING, connection=conn)
