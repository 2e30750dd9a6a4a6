"""Tenant names derived from a project id, and refusal of hostile ids."""

from __future__ import annotations

import pytest

from shared.naming import InvalidProjectIdError, TenantNames, validate_project_id


def test_tenant_names_for_valid_id() -> None:
    """A valid id gives tenant_-prefixed identifiers (hyphens as underscores) and a bucket."""
    names = TenantNames.for_project("acme-app-2")
    assert names.project_id == "acme-app-2"
    assert names.database == names.role == names.schema == "tenant_acme_app_2"
    assert names.bucket == "tenant-acme-app-2"


def test_names_are_distinct_for_distinct_ids() -> None:
    """Different ids never map to the same identifiers."""
    assert TenantNames.for_project("ab-c").database != TenantNames.for_project("abc").database


@pytest.mark.parametrize(
    "hostile",
    [
        "x'; DROP TABLE projects; --",
        'acme"app',
        "acme;app",
        "\u0430cme-app",  # Cyrillic a
        "a" * 200,
        "Acme-App",
        "acme_app",
        "ab",
        "",
        "1acme",
        "acme--app",
        "acme-app-",
        "acme\x00app",
    ],
)
def test_hostile_ids_refused(hostile: str) -> None:
    """Hostile or malformed ids raise InvalidProjectIdError before any name is made."""
    with pytest.raises(InvalidProjectIdError):
        TenantNames.for_project(hostile)
    with pytest.raises(ValueError, match="project id must be"):  # a ValueError subclass
        validate_project_id(hostile)


def test_length_message_names_the_rule() -> None:
    """A too-long id is refused with a message giving the allowed length, not the id."""
    with pytest.raises(InvalidProjectIdError, match="3 to 48 characters, got 200") as caught:
        validate_project_id("a" * 200)
    assert "a" * 10 not in str(caught.value)
