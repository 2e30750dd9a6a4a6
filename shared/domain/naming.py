"""Names derived from a project id. The id is validated first (``PROJECT_ID_PATTERN``), and
every name is still quoted as an identifier wherever it reaches SQL."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from shared.domain.payloads import PROJECT_ID_MAX, PROJECT_ID_MIN, PROJECT_ID_PATTERN

_PROJECT_ID = re.compile(PROJECT_ID_PATTERN)


class InvalidProjectIdError(ValueError):
    """A project id outside the pattern; it must never reach SQL."""


_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)


def normalize_project_id(project_id: str) -> str:
    """A UUID in any case as the lower-case form the record keeps; anything else unchanged."""
    return project_id.lower() if _UUID.fullmatch(project_id) else project_id


def validate_project_id(project_id: str) -> str:
    """The project id (a UUID lower-cased), or InvalidProjectIdError naming the rule it breaks."""
    if not isinstance(project_id, str):
        raise InvalidProjectIdError(f"project id must be text, not {type(project_id).__name__}")
    project_id = normalize_project_id(project_id)
    if not PROJECT_ID_MIN <= len(project_id) <= PROJECT_ID_MAX:
        raise InvalidProjectIdError(
            f"project id must be {PROJECT_ID_MIN} to {PROJECT_ID_MAX} characters, got {len(project_id)}"
        )
    if not project_id.isascii() or _PROJECT_ID.fullmatch(project_id) is None:
        raise InvalidProjectIdError(
            "project id must be lower-case letters, digits and single hyphens (a slug or a UUID)"
        )
    return project_id


TENANT_PREFIX = "tenant_"
"""Every live tenant database, role and schema is named ``tenant_<id>``."""
ARCHIVE_PREFIX = "archived_"
"""A deleted tenant's database, until it is purged: ``archived_<id>``, out of the tenant namespace."""
POOL_PREFIX = "pool_"
"""A warm pool's database and its role, made ahead of any tenant: ``pool_<token>``, out of the
tenant namespace until the database step renames them into a tenant's names."""
POOL_PREPARING_PREFIX = "poolprep_"
"""A pool database still being made (``poolprep_<token>``): not in the pool until renamed."""


def like_prefix(prefix: str) -> str:
    """A SQL ``LIKE`` pattern (``ESCAPE '\\'``) for names starting with ``prefix``, its own
    wildcard escaped: ``tenant_%`` would also match ``tenantX...``."""
    return prefix.replace("_", "\\_") + "%"


@dataclass(frozen=True, slots=True)
class TenantNames:
    """The tenant's database, login role, schema and storage bucket, and the name its database
    takes while archived."""

    project_id: str
    database: str
    role: str
    schema: str
    bucket: str
    archive: str

    @classmethod
    def for_project(cls, project_id: str) -> TenantNames:
        """Names for a (validated) project id; hyphens become underscores in identifiers.

        The mapping is injective because ids never contain underscores.
        """
        project_id = validate_project_id(project_id)
        underscored = project_id.replace("-", "_")
        ident = TENANT_PREFIX + underscored
        return cls(
            project_id=project_id,
            database=ident,
            role=ident,
            schema=ident,
            bucket=f"tenant-{project_id}",
            archive=ARCHIVE_PREFIX + underscored,
        )


def project_id_of_tenant(name: str) -> str | None:
    """The project id a tenant database or role name (``tenant_<id>``) derives from, or None
    when no valid project id gives that name (the inverse of :meth:`TenantNames.for_project`)."""
    return _project_id_of(name, TENANT_PREFIX, lambda names: names.database)


def project_id_of_archive(name: str) -> str | None:
    """The project id an archived database name (``archived_<id>``) derives from, or None."""
    return _project_id_of(name, ARCHIVE_PREFIX, lambda names: names.archive)


def _project_id_of(name: str, prefix: str, derived: Callable[[TenantNames], str]) -> str | None:
    if not name.startswith(prefix):
        return None
    candidate = name[len(prefix) :].replace("_", "-")
    try:
        project_id = validate_project_id(candidate)
    except InvalidProjectIdError:
        return None
    return project_id if derived(TenantNames.for_project(project_id)) == name else None
