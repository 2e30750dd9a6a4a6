"""What the control plane records, as reconcile reads it: projects and their sightings.

Each project's steps' statuses and where it stands in its life (``ProjectState``, ``Removal``),
where each is placed, the API keys each holds, read through the ``ProjectRecords`` and
``KeyCounts`` ports (``SqlProjectRecords`` in one statement); the orphans seen in earlier runs
(``Sightings``, ``SqlSightings`` over ``reconcile_sightings``), which the grace period counts
from; the steps whose record the judgement reads, and the tenant names a project id derives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from sqlalchemy import Engine, text

from shared.domain.naming import InvalidProjectIdError, TenantNames
from shared.domain.steps import StepStatus, step_by_key

from .findings import Finding

DATABASE_STEP = step_by_key("database").name
SCHEMA_STEP = step_by_key("schema").name
KEYS_STEP = step_by_key("keys").name
ARCHIVE_STEP = step_by_key("deprovision-database").name


def tenant_names(project_id: str) -> TenantNames | None:
    """The tenant names of a recorded project; None for an id that is not valid (it can have
    no objects, so it matches none and is never found missing)."""
    try:
        return TenantNames.for_project(project_id)
    except InvalidProjectIdError:
        return None


class Removal(StrEnum):
    """Where a project stands in its removal."""

    LIVE = "live"
    UNDER_WAY = "under way"
    DELETED = "deleted"
    """Its reverse chain is done: its database archived, restorable until purged."""
    PURGED = "purged"


@dataclass(frozen=True, slots=True)
class ProjectState:
    """A project as reconcile judges it: its steps' statuses and where it stands."""

    statuses: Mapping[str, StepStatus]
    removal: Removal = Removal.LIVE
    ready: bool = False
    keys_wanted: int | None = None
    """The number of API keys its request asks for (None: no request)."""

    def done(self, step_name: str) -> bool:
        return self.statuses.get(step_name) is StepStatus.SUCCESS


class ProjectRecords(Protocol):
    """The control plane's projects, read whole."""

    def project_states(self) -> dict[str, ProjectState]:
        """Every project id with its steps and its removal state."""
        ...

    def project_placements(self) -> dict[str, str]:
        """Every placed project id with the tenant cluster it is placed on."""
        ...


class KeyCounts(Protocol):
    """The API keys each project holds (the control plane's own table)."""

    def key_counts(self) -> dict[str, int]: ...


_STATES = text(
    """
    SELECT p.project_id, p.ready_at IS NOT NULL AS ready, p.deprovision_requested_at IS NOT NULL AS fenced,
           p.deleted_at IS NOT NULL AS deleted, p.purged_at IS NOT NULL AS purged,
           (p.request -> 'api_keys' ->> 'count')::int AS keys_wanted,
           (p.request IS NOT NULL) AS requested,
           coalesce(jsonb_object_agg(s.step_name, s.status) FILTER (WHERE s.step_name IS NOT NULL), '{}')
               AS statuses
    FROM projects AS p LEFT JOIN provisioning_steps AS s ON s.project_id = p.project_id
    GROUP BY p.project_id
    """
)


class SqlProjectRecords:
    """Projects with their steps and removal state, from the control-plane database, in one
    statement; and the orphans reconcile has seen (``reconcile_sightings``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def project_states(self) -> dict[str, ProjectState]:
        with self.engine.connect() as conn:
            rows = conn.execute(_STATES).mappings().all()
        states: dict[str, ProjectState] = {}
        for row in rows:
            removal = Removal.LIVE
            if row["purged"]:
                removal = Removal.PURGED
            elif row["deleted"]:
                removal = Removal.DELETED
            elif row["fenced"]:
                removal = Removal.UNDER_WAY
            keys_wanted = row["keys_wanted"] if row["requested"] else None
            if row["requested"] and keys_wanted is None:
                keys_wanted = 2  # the payload's default, absent from a request that left it out
            states[str(row["project_id"])] = ProjectState(
                statuses={str(k): StepStatus(v) for k, v in dict(row["statuses"]).items()},
                removal=removal,
                ready=bool(row["ready"]),
                keys_wanted=keys_wanted,
            )
        return states

    def project_placements(self) -> dict[str, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT project_id, cluster FROM tenant_placements"))
            return {str(project_id): str(cluster) for project_id, cluster in rows}


class Sightings(Protocol):
    """Since when each orphan has been seen orphaned, kept between runs."""

    def seen(self, findings: Sequence[Finding]) -> tuple[dict[tuple[str, str, str], datetime], datetime]:
        """Record that ``findings`` (orphans) are seen now, forget every other sighting (it is
        orphaned no more); each one's first sighting, and now."""
        ...


class SqlSightings:
    """``reconcile_sightings`` in the control plane."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def seen(self, findings: Sequence[Finding]) -> tuple[dict[tuple[str, str, str], datetime], datetime]:
        keys = sorted({(f.kind.value, f.subject, f.place) for f in findings})
        with self.engine.begin() as conn:
            now = conn.execute(text("SELECT now()")).scalar_one()
            if keys:
                conn.execute(
                    text(
                        """
                        INSERT INTO reconcile_sightings (kind, subject, place)
                        SELECT * FROM unnest(CAST(:kinds AS text[]), CAST(:subjects AS text[]),
                                             CAST(:places AS text[]))
                        ON CONFLICT (kind, subject, place) DO UPDATE SET last_seen_at = now()
                        """
                    ),
                    {
                        "kinds": [k[0] for k in keys],
                        "subjects": [k[1] for k in keys],
                        "places": [k[2] for k in keys],
                    },
                )
            conn.execute(
                text(
                    "DELETE FROM reconcile_sightings WHERE (kind, subject, place) NOT IN "
                    "(SELECT * FROM unnest(CAST(:kinds AS text[]), CAST(:subjects AS text[]), "
                    "CAST(:places AS text[])))"
                ),
                {
                    "kinds": [k[0] for k in keys],
                    "subjects": [k[1] for k in keys],
                    "places": [k[2] for k in keys],
                },
            )
            rows = conn.execute(text("SELECT kind, subject, place, first_seen_at FROM reconcile_sightings"))
            first = {(str(k), str(s), str(p)): at for k, s, p, at in rows}
        assert isinstance(now, datetime)
        return first, now
