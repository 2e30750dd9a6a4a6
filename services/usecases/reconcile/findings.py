"""What reconcile reports: the kinds of drift, one finding per disagreement, and the report.

A finding names what disagrees (its ``DriftKind``), its subject and where it is; the report
holds the findings in a stable order with the counts of what the inventory held. Nothing here
lists or judges: these are the records the other modules pass along, and the error that aborts
a run with nothing judged (``ReconcileAbortedError``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from shared.clusters import DEFAULT_CLUSTER


class ReconcileAbortedError(Exception):
    """A source could not be listed, or its listing contradicts the record wholesale, so
    nothing was judged; the message names the source (and the counts)."""


class DriftKind(StrEnum):
    """What disagrees, in the order a report lists them."""

    DATABASE_WITHOUT_PROJECT = "database_without_project"
    ROLE_WITHOUT_PROJECT = "role_without_project"
    REGISTRATION_WITHOUT_PROJECT = "registration_without_project"
    ARCHIVE_WITHOUT_PROJECT = "archive_without_project"
    """An archived database no deleted, unpurged project explains."""
    PROJECT_MISSING_DATABASE = "project_missing_database"
    PROJECT_MISSING_ROLE = "project_missing_role"
    PROJECT_MISSING_REGISTRATION = "project_missing_registration"
    PROJECT_MISSING_KEYS = "project_missing_keys"
    PROJECT_MISSING_ARCHIVE = "project_missing_archive"
    """A deleted project, still restorable by the record, whose archive is gone."""
    LEFT_BY_DELETED_PROJECT = "left_by_deleted_project"
    STRAY_TENANT_OBJECT = "stray_tenant_object"
    """A project's database or role on a cluster other than the one it is placed on."""


ORPHAN_KINDS = frozenset(
    {
        DriftKind.DATABASE_WITHOUT_PROJECT,
        DriftKind.ROLE_WITHOUT_PROJECT,
        DriftKind.REGISTRATION_WITHOUT_PROJECT,
    }
)
"""Findings whose subject no project explains: acted on only after the grace period."""

_KIND_ORDER = {kind: position for position, kind in enumerate(DriftKind)}


@dataclass(frozen=True, slots=True)
class Finding:
    """One disagreement. ``subject`` is the orphan's name (database, role, tenant id) or the
    project id whose object is missing; ``service`` is set for registrations."""

    kind: DriftKind
    subject: str
    detail: str
    service: str | None = None
    cluster: str | None = None
    """The tenant cluster the object was found on (orphans) or should be on (missing)."""

    def sort_key(self) -> tuple[int, str, str]:
        return _KIND_ORDER[self.kind], self.subject, self.service or ""

    @property
    def place(self) -> str:
        """Where the object is: its service or its cluster (a sighting's key with kind and subject)."""
        return self.service or self.cluster or DEFAULT_CLUSTER


@dataclass(frozen=True)
class ReconcileReport:
    """The findings, in a stable order, and what the inventory held."""

    findings: tuple[Finding, ...]
    projects: int
    databases: int
    roles: int
    registrations: Mapping[str, int] = field(default_factory=dict)
    archives: int = 0
    ready: frozenset[str] = frozenset()
    """The projects among the findings' that had been ready (their missing database is data loss)."""

    @property
    def drift(self) -> bool:
        return bool(self.findings)

    def counts(self) -> dict[str, int]:
        """How many findings of each kind (kinds with none left out), in report order."""
        counted: dict[str, int] = {}
        for finding in self.findings:
            counted[finding.kind.value] = counted.get(finding.kind.value, 0) + 1
        return counted

    def summary(self) -> str:
        """One line: the findings by kind, then what was inventoried."""
        held = (
            f"{self.projects} projects, {self.databases} tenant databases, {self.archives} archives, "
            f"{self.roles} tenant roles, " + ", ".join(f"{n} at {s}" for s, n in self.registrations.items())
        )
        if not self.findings:
            return f"no drift ({held})"
        kinds = ", ".join(f"{n} {kind}" for kind, n in self.counts().items())
        return f"{len(self.findings)} finding(s): {kinds} ({held})"
