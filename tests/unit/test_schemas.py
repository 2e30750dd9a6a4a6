"""The committed JSON Schemas are current and agree with the pydantic models."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker
from pydantic import ValidationError

import services.schemas
from services.schemas import render_schemas, stale_schemas
from shared.domain.events import ProvisioningRequested
from shared.domain.payloads import ProvisionProjectPayload
from tests.fakes import make_requested

REPO_SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


_rendered = functools.cache(render_schemas)  # rendering every schema takes a while


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    schema = json.loads((REPO_SCHEMAS / name).read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FormatChecker())


def test_committed_schemas_are_current(monkeypatch: pytest.MonkeyPatch) -> None:
    """schemas/ is exactly what the models generate (the 'schemas are stale' CI check)."""
    monkeypatch.setattr(services.schemas, "render_schemas", _rendered)
    assert stale_schemas(REPO_SCHEMAS) == []


def test_stale_schemas_detects_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """stale_schemas reports a changed, a missing and an unknown schema file."""
    monkeypatch.setattr(services.schemas, "render_schemas", _rendered)
    directory = tmp_path / "schemas"
    shutil.copytree(REPO_SCHEMAS, directory)
    (directory / "provisioning.requested.json").write_text("{}\n")
    (directory / "provisioning.keys.failed.json").unlink()
    (directory / "provisioning.old.json").write_text("{}\n")
    assert stale_schemas(directory) == [
        "provisioning.keys.failed.json",
        "provisioning.old.json",
        "provisioning.requested.json",
    ]


VALID_REQUESTS: list[dict[str, Any]] = [
    {},
    {"services": {"auth": False, "storage": False}, "api_keys": {"count": 20, "prefix": "live"}},
    {
        "database": {"engine": "mysql", "version": "16", "size": "small", "storage_gb": 10},
        "owner_id": "u-1",
        "organization_id": "o-1",
        "metadata": {"team": "core", "tags": ["x", 1, None]},
    },
]


@pytest.mark.parametrize("fields", VALID_REQUESTS)
def test_schema_valid_event_is_accepted_by_model(fields: dict[str, Any]) -> None:
    """A provisioning.requested document valid against its schema is accepted by the model."""
    document = make_requested(**fields).model_dump(mode="json")
    errors = list(_validator("provisioning.requested.json").iter_errors(document))
    assert errors == []
    assert ProvisioningRequested.model_validate_json(json.dumps(document)).model_dump(mode="json") == document
    request = document["request"]
    assert list(_validator("ProvisionProjectPayload.json").iter_errors(request)) == []
    assert ProvisionProjectPayload.model_validate_json(json.dumps(request)).project_id == "acme-app"


def _bad(document: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    target = document
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return document


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("project_id",), "Bad_ID"),
        (("request", "project_id"), "x'; DROP TABLE projects; --"),
        (("request", "project_id"), "\u0430cme-app"),  # Cyrillic a
        (("request", "region"), "mars-1"),
        (("request", "api_keys"), {"count": 0}),
        (("request", "api_keys"), {"count": 21}),
        (("request", "database"), {"engine": "oracle"}),
        (("request", "surprise"), True),
        (("attempt",), 0),
    ],
)
def test_document_rejected_by_model_is_rejected_by_schema(path: tuple[str, ...], value: Any) -> None:
    """A document the model rejects (bad id, region, count...) is rejected by the schema too."""
    document = _bad(make_requested().model_dump(mode="json"), path, value)
    with pytest.raises(ValidationError):
        ProvisioningRequested.model_validate_json(json.dumps(document))
    assert not _validator("provisioning.requested.json").is_valid(document)
