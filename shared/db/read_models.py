"""What the record shows of the projects, read only: the list view's stages in one pass, the
stranded steps, a project's snapshot and its transition log, the steps' median durations."""

from __future__ import annotations

from sqlalchemy import Connection, Engine, text

from shared.db.common import read_snapshot, step_columns, to_row, unavailable_as_error
from shared.domain.records import ProjectOverview, Snapshot, StepRow, StepTransition, StrandRule
from shared.domain.steps import PURGE_STEP, STEPS

# The stage of every project in one pass, by the rules of shared.domain.steps.derive_stage: once
# reverse rows exist, a failed one (or a failed purge) FAILED, all the reverse chain's done
# DELETED (CANCELLED if never ready) whatever the purge's status, else
# DEPROVISIONING; before that, no steps INITIALIZING, a failed step FAILED, all done COMPLETED,
# all pending INITIALIZING, else the first step not done. Only the projects requested by :owner
# when it is not NULL (an owner-scoped caller of the API).
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
        WHERE CAST(:owner AS text) IS NULL OR p.requested_by = :owner
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


class ReadModels:
    """The read models over one engine; ``strand_rule`` when a pending step counts as stranded."""

    def __init__(self, engine: Engine, *, strand_rule: StrandRule | None = None) -> None:
        self.engine = engine
        self.strand_rule = strand_rule or StrandRule()

    @unavailable_as_error
    def snapshot(self, project_id: str, *, connection: Connection | None = None) -> Snapshot:
        """The project's record and all its step rows, read in one transaction
        (``connection``'s when given)."""
        if connection is None:
            with self.engine.begin() as conn:
                return read_snapshot(conn, project_id)
        return read_snapshot(connection, project_id)

    @unavailable_as_error
    def overview(
        self,
        stage_keys: list[str] | None = None,
        *,
        limit: int = 50,
        offset: int = 0,
        requested_by: str | None = None,
    ) -> tuple[list[ProjectOverview], dict[str, int]]:
        """Projects at one of ``stage_keys`` (all when None), the longest unchanged first, at
        most ``limit`` after skipping ``offset``; and how many projects stand at each stage key.
        With ``requested_by``, only (and the counts only of) the projects that caller requested."""
        rule = self.strand_rule.params() | {"owner": requested_by}
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

    @unavailable_as_error
    def stranded(
        self, project_id: str | None = None, *, limit: int = 1000, requested_by: str | None = None
    ) -> list[tuple[str, StepRow]]:
        """The stranded steps (of ``project_id``, or of every project; only of those requested by
        ``requested_by`` when given), oldest change first: each project's next step ``pending``
        past every wait the record allows (see :class:`StrandRule`)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    _OVERVIEW + f"SELECT staged.project_id AS stranded_project, {step_columns('s')} "
                    "FROM staged JOIN provisioning_steps AS s ON s.id = staged.step_id "
                    "WHERE staged.stranded AND (CAST(:p AS text) IS NULL OR staged.project_id = :p) "
                    "ORDER BY staged.last_change, staged.project_id LIMIT :limit"
                ),
                {"p": project_id, "limit": limit, "owner": requested_by} | self.strand_rule.params(),
            ).mappings()
            return [(str(r["stranded_project"]), to_row(r)) for r in rows]

    @unavailable_as_error
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

    @unavailable_as_error
    def last_transition_id(self, project_id: str) -> int:
        """The id of the project's latest logged transition; 0 when it has none."""
        with self.engine.connect() as conn:
            value = conn.execute(
                text("SELECT coalesce(max(id), 0) FROM step_transitions WHERE project_id = :p"),
                {"p": project_id},
            ).scalar_one()
        return int(value)

    @unavailable_as_error
    def median_step_seconds(self, *, sample: int = 100) -> dict[str, float]:
        """Each step's median duration (seconds) over its latest ``sample`` successes of the
        last day; a step with none is absent."""
        with self.engine.connect() as conn:
            rows = conn.execute(_MEDIAN_STEP_SECONDS, {"sample": sample}).all()
        return {str(name): float(seconds) for name, seconds in rows}
