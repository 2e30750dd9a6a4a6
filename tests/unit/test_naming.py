"""Tenant names derived from a project id, and refusal of hostile ids."""

from __future__ import annotations

import pytest

from shared.domain.naming import InvalidProjectIdError, TenantNames, validate_project_id


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


SEED_ID = "550e8400-e29b-41d4-a716-446655440000"


@pytest.mark.parametrize("given", [SEED_ID, SEED_ID.upper(), "0c9d2f4e-1111-4a4a-8b8b-000000000000", "1acme"])
def test_uuids_and_ids_starting_with_a_digit_are_accepted(given: str) -> None:
    """Seed 000's UUID project ids (any case, kept lower-case) and ids starting with a digit
    are valid, and their names stay identifiers within PostgreSQL's 63 bytes."""
    project_id = validate_project_id(given)
    assert project_id == given.lower()
    names = TenantNames.for_project(given)
    assert names.project_id == project_id
    assert names.database == "tenant_" + project_id.replace("-", "_")
    assert len(names.database.encode()) <= 63
    assert names.bucket == f"tenant-{project_id}"


def test_the_longest_id_still_fits_an_identifier() -> None:
    """A 48-character id gives a 55-byte identifier, under PostgreSQL's 63."""
    assert len(TenantNames.for_project("a" * 48).database.encode()) == 55
