"""JSON Schemas of every event, generated from the models into ``schemas/``, with the HTTP API's
OpenAPI document and the topics' AsyncAPI document (built from the same schemas)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from services.asyncapi import asyncapi_document
from services.web.app import openapi_document
from shared.domain.events import event_models
from shared.domain.payloads import ProvisionProjectPayload, ProvisionProjectResult


class ContractJsonSchema(GenerateJsonSchema):
    """Pydantic's generator, with a constrained dict key stated as ``propertyNames``.

    Pydantic writes a key pattern as ``patternProperties``, which leaves a key that does not
    match it unchecked (a NUL in a metadata key would pass); the models refuse such a key.
    """

    def dict_schema(self, schema: core_schema.DictSchema) -> JsonSchemaValue:
        json_schema: dict[str, Any] = super().dict_schema(schema)
        patterns = json_schema.pop("patternProperties", None)
        if patterns:
            ((pattern, values),) = patterns.items()
            json_schema["additionalProperties"] = values
            json_schema["propertyNames"] = {**json_schema.get("propertyNames", {}), "pattern": pattern}
        return json_schema


def render_schemas() -> dict[str, str]:
    """File name -> JSON Schema text, for every event plus the seed's payload and result,
    the HTTP API's OpenAPI document (``openapi.json``) and the AsyncAPI document (``asyncapi.json``)."""
    events = event_models()
    models = {f"{event_type}.json": model for event_type, model in events.items()}
    models["ProvisionProjectPayload.json"] = ProvisionProjectPayload
    models["ProvisionProjectResult.json"] = ProvisionProjectResult
    schemas: dict[str, dict[str, Any]] = {}
    for name, model in sorted(models.items()):
        schema = model.model_json_schema(mode="validation", schema_generator=ContractJsonSchema)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = name
        schemas[name] = schema
    rendered = {name: _dumps(schema) for name, schema in schemas.items()}
    rendered["openapi.json"] = _dumps(openapi_document())
    rendered["asyncapi.json"] = _dumps(asyncapi_document({t: schemas[f"{t}.json"] for t in events}))
    return rendered


def _dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def write_schemas(directory: Path) -> list[str]:
    """Write the schemas; returns the files that changed. Stale files are removed."""
    rendered = render_schemas()
    directory.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, text in rendered.items():
        path = directory / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed.append(name)
    for path in directory.glob("*.json"):
        if path.name not in rendered:
            path.unlink()
            changed.append(path.name)
    return changed


def stale_schemas(directory: Path) -> list[str]:
    """The files under ``directory`` that differ from what the models generate."""
    rendered = render_schemas()
    stale = [
        n for n, t in rendered.items() if not (directory / n).exists() or (directory / n).read_text() != t
    ]
    stale += [p.name for p in directory.glob("*.json") if p.name not in rendered]
    return sorted(stale)
