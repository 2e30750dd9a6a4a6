"""The AsyncAPI 3.0 document of the topics (``schemas/asyncapi.json``), built from the same models
as the JSON Schemas beside it.

Every topic is a channel (its address the topic name), every event type a message: its payload
the event's JSON Schema (inlined: each schema's ``$defs`` become ``components.schemas``), its key
the project id (the Kafka message binding's ``key``), its headers the project's own and the
CloudEvents binary mode's (:mod:`shared.domain.cloud_events`). The operations say who sends and
who receives what: the steps (:mod:`shared.domain.steps`), the requesting clients, the API and the
operator; each is tagged with the principal it runs as (:mod:`shared.domain.acls`), and every one
of them is allowed by the ACL set (a test checks it).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from shared.domain import acls
from shared.domain.cloud_events import (
    CAUSATION_EXTENSION,
    CONTENT_TYPE_HEADER,
    CORRELATION_EXTENSION,
    JSON_CONTENT_TYPE,
    REQUESTS_SOURCE,
    SOURCE_PREFIX,
    SPECVERSION,
)
from shared.domain.events import event_models
from shared.domain.payloads import PROJECT_ID_MAX, PROJECT_ID_MIN, PROJECT_ID_PATTERN, SCHEMA_VERSION
from shared.domain.steps import (
    ALL_STEPS,
    DEADLETTER_TOPIC,
    DEPROVISIONING_REQUESTED_TOPIC,
    LETTER_TOPICS,
    PARKED_TOPIC,
    PURGE_REQUESTED_TOPIC,
    REQUESTED_TOPIC,
    all_topics,
)

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
_KAFKA = {"bindingVersion": KAFKA_BINDING_VERSION}
_SCHEMAS = "#/components/schemas/"
_UUID = {"type": "string", "format": "uuid"}


@dataclass(frozen=True, slots=True)
class Operation:
    """One side of a topic: who (a step's key or a role), ``send`` or ``receive``, and why."""

    actor: str
    role: str
    """The principal's role (``acls.principal(role)``): a step's service, or one of acls.ROLES."""
    action: str
    topic: str
    summary: str
    group: str | None = None

    @property
    def operation_id(self) -> str:
        return f"{self.actor}-{self.action}-{self.topic}"


def operations() -> list[Operation]:
    """Who sends and who receives each topic, in a stable order."""
    ops: list[Operation] = []
    for step in ALL_STEPS:
        group = step.consumer_group
        ops += [
            Operation(step.key, step.service, "receive", step.input_topic, f"{step.key}: its input", group),
            Operation(step.key, step.service, "receive", step.retry_topic, f"{step.key}: its retries", group),
            Operation(step.key, step.service, "send", step.completed_topic, f"{step.key}: done or skipped"),
            Operation(step.key, step.service, "send", step.retry_topic, f"{step.key}: a retryable error"),
            Operation(step.key, step.service, "send", step.failed_topic, f"{step.key}: failed for good"),
            Operation(step.key, step.service, "send", DEADLETTER_TOPIC, f"{step.key}: what it cannot take"),
        ]
    for role, why in (
        (acls.REQUESTER, "provision request, request_provisioning, enqueue_job"),
        (acls.API, "POST /v1/projects"),
    ):
        ops.append(Operation(role, role, "send", REQUESTED_TOPIC, f"a project requested ({why})"))
    for role, why in (
        (acls.REQUESTER, "provision deprovision, request_deprovisioning"),
        (acls.API, "DELETE /v1/projects/{id}"),
        (acls.OPERATOR, "provision reconcile --apply"),
    ):
        ops.append(
            Operation(role, role, "send", DEPROVISIONING_REQUESTED_TOPIC, f"a removal requested ({why})")
        )
    ops += [
        Operation("purge-sweep", "database", "send", PURGE_REQUESTED_TOPIC, "a retention window has passed"),
        Operation(
            acls.REQUESTER, acls.REQUESTER, "send", PURGE_REQUESTED_TOPIC, "provision deprovision --purge-now"
        ),
    ]
    for step in ALL_STEPS:
        for role, why in (
            (acls.OPERATOR, "provision replay, provision reconcile --apply"),
            (acls.API, "a replay"),
        ):
            ops.append(Operation(role, role, "send", step.retry_topic, f"{step.key} re-driven ({why})"))
            ops.append(
                Operation(role, role, "receive", step.failed_topic, f"{step.key}'s failures, to replay")
            )
    for role in (acls.OPERATOR, acls.API):
        ops.append(Operation(role, role, "receive", DEADLETTER_TOPIC, "what the steps refused, to inspect"))
        ops.append(Operation(role, role, "receive", PARKED_TOPIC, "letters that failed again, to inspect"))
    ops.append(
        Operation(
            acls.OPERATOR, acls.OPERATOR, "send", PARKED_TOPIC, "provision deadletters redrive: failed again"
        )
    )
    return ops


def asyncapi_document(event_schemas: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The AsyncAPI document, from the event JSON Schemas by ``event_type`` (as ``schemas/`` has them)."""
    models = event_models()
    schemas = _component_schemas(event_schemas, models)
    schemas |= _header_and_key_schemas()
    messages = {_message_id(models[t]): _message(t, models[t]) for t in all_topics()}
    channels = {topic: _channel(topic, _message_id(models[topic])) for topic in all_topics()}
    ops = {
        op.operation_id: {
            "action": op.action,
            "channel": {"$ref": f"#/channels/{op.topic}"},
            "messages": [{"$ref": f"#/channels/{op.topic}/messages/{_message_id(models[op.topic])}"}],
            "summary": op.summary,
            "tags": [{"name": acls.user_name(op.role)}],
            **(
                {"bindings": {"kafka": {"groupId": {"type": "string", "const": op.group}, **_KAFKA}}}
                if op.group
                else {}
            ),
        }
        for op in operations()
    }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Tenant provisioning events",
            "version": f"{SCHEMA_VERSION}.0.0",
            "description": (
                "The topics of tenant provisioning by Kafka choreography: seven step services chained "
                "by topics, their reverse chain and the purge. Every message is JSON keyed by the project "
                "id, and a CloudEvent in the Kafka binding's binary mode (ce_* headers); a structured "
                "CloudEvent (application/cloudevents+json, the event as its data) is accepted too. Each "
                "operation is tagged with the principal that performs it. Generated by `provision schemas`."
            ),
        },
        "defaultContentType": JSON_CONTENT_TYPE,
        "servers": _servers(),
        "channels": channels,
        "operations": ops,
        "components": {"schemas": schemas, "messages": messages, "securitySchemes": _security_schemes()},
    }


def _message_id(model: type[BaseModel]) -> str:
    return model.__name__


def _component_schemas(
    event_schemas: Mapping[str, dict[str, Any]], models: Mapping[str, type[BaseModel]]
) -> dict[str, Any]:
    """Every event's schema and every schema its ``$defs`` hold, by name, refs pointed at them.

    The same name always means the same schema (checked); pydantic's ``discriminator`` object,
    which AsyncAPI's Schema Object spells otherwise, is left out: the ``event_type`` consts of
    the ``oneOf`` branches say the same.
    """
    found: dict[str, Any] = {}

    def put(name: str, schema: Any) -> None:
        clean = _rewrite(schema)
        if name in found and found[name] != clean:
            raise ValueError(f"two different schemas are both called {name}")
        found[name] = clean

    for event_type, schema in event_schemas.items():
        top = {k: v for k, v in schema.items() if k not in ("$defs", "$schema", "$id")}
        put(_message_id(models[event_type]), top)
        for name, definition in schema.get("$defs", {}).items():
            put(name, definition)
    return dict(sorted(found.items()))


def _rewrite(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _rewrite(v) for k, v in node.items() if k != "discriminator"}
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            out["$ref"] = _SCHEMAS + ref.removeprefix("#/$defs/")
        return out
    if isinstance(node, list):
        return [_rewrite(v) for v in node]
    return node


def _header_and_key_schemas() -> dict[str, Any]:
    project_id = {
        "type": "string",
        "pattern": PROJECT_ID_PATTERN,
        "minLength": PROJECT_ID_MIN,
        "maxLength": PROJECT_ID_MAX,
    }
    text = {"type": "string"}
    common = {
        "event_type": {**text, "description": "The event's event_type (also its topic)."},
        "schema_version": {
            **text,
            "description": "The event's schema_version, in decimal.",
            "pattern": "^[0-9]+$",
        },
        "ce_specversion": {**text, "const": SPECVERSION, "description": "CloudEvents: the spec version."},
        "ce_id": {**_UUID, "description": "CloudEvents id: the event's event_id."},
        "ce_type": {**text, "description": "CloudEvents type: the event_type."},
        "ce_source": {
            **text,
            "format": "uri-reference",
            "pattern": "^" + SOURCE_PREFIX + "[a-z0-9-]+$",
            "description": (
                f"CloudEvents source: {SOURCE_PREFIX}<service>, the step service whose topic it is "
                f"(for a dead letter: whose consumer refused the message), or {REQUESTS_SOURCE} for "
                "the request topics."
            ),
        },
        "ce_time": {
            **text,
            "format": "date-time",
            "description": "CloudEvents time: occurred_at (RFC 3339).",
        },
        CONTENT_TYPE_HEADER: {**text, "const": JSON_CONTENT_TYPE, "description": "The value's media type."},
    }
    event_headers = {
        **common,
        "traceparent": {
            **text,
            "pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
            "description": "W3C trace context of the span that produced the event.",
        },
        "ce_subject": {**project_id, "description": "CloudEvents subject: the project id."},
        "ce_" + CORRELATION_EXTENSION: {**_UUID, "description": "Extension: the event's correlation_id."},
        "ce_" + CAUSATION_EXTENSION: {**_UUID, "description": "Extension: the event's causation_id, if any."},
    }
    dead_letter_headers = {
        **common,
        "ce_subject": {
            **text,
            "description": "CloudEvents subject: <topic>/<partition>/<offset> of the refused message.",
        },
    }
    optional = "Headers are optional on the way in (the value decides); the project's producers set them all."
    return {
        "EventHeaders": {"type": "object", "description": optional, "properties": event_headers},
        "DeadLetterHeaders": {"type": "object", "properties": dead_letter_headers},
        "ProjectKey": {**project_id, "description": "The message key: the project id (UTF-8)."},
        "DeadLetterKey": {
            "type": "string",
            "maxLength": 256,
            "description": "The refused message's key, its first 256 bytes (empty when it had none).",
        },
    }


def _message(event_type: str, model: type[BaseModel]) -> dict[str, Any]:
    doc = inspect.getdoc(model) or ""
    dead = event_type in LETTER_TOPICS  # keyed and headed as letters
    headers = "DeadLetterHeaders" if dead else "EventHeaders"
    constants = {name: {"const": event_type} for name in ("event_type", "ce_type")}
    message: dict[str, Any] = {
        "name": event_type,
        "title": model.__name__,
        "summary": doc.split("\n\n", 1)[0].replace("\n", " ").replace("``", "`"),
        "contentType": JSON_CONTENT_TYPE,
        "headers": {"allOf": [{"$ref": _SCHEMAS + headers}, {"type": "object", "properties": constants}]},
        "payload": {"$ref": _SCHEMAS + _message_id(model)},
        "bindings": {
            "kafka": {"key": {"$ref": _SCHEMAS + ("DeadLetterKey" if dead else "ProjectKey")}, **_KAFKA}
        },
    }
    if not dead:
        message["correlationId"] = {
            "description": "The request's id, the same along its chain.",
            "location": "$message.payload#/correlation_id",
        }
    return message


def _channel(topic: str, message_id: str) -> dict[str, Any]:
    return {
        "address": topic,
        "messages": {message_id: {"$ref": f"#/components/messages/{message_id}"}},
        "bindings": {"kafka": dict(_KAFKA)},
    }


def _servers() -> dict[str, Any]:
    bindings = {"kafka": dict(_KAFKA)}
    variables = {"bootstrap": {"default": "localhost:9092", "description": "KAFKA_BOOTSTRAP_SERVERS"}}
    return {
        "plaintext": {
            "host": "{bootstrap}",
            "protocol": "kafka",
            "description": "PROVISION_KAFKA_SECURITY_PROTOCOL=PLAINTEXT (the default).",
            "variables": copy.deepcopy(variables),
            "bindings": copy.deepcopy(bindings),
        },
        "secure": {
            "host": "{bootstrap}",
            "protocol": "kafka-secure",
            "description": (
                "SASL_SSL (SCRAM-SHA-512, SCRAM-SHA-256, PLAIN or OAUTHBEARER) or SSL with a client "
                "certificate (mutual TLS): PROVISION_KAFKA_SECURITY_PROTOCOL and "
                "PROVISION_KAFKA_SASL_MECHANISM say which."
            ),
            "variables": copy.deepcopy(variables),
            "security": [{"$ref": f"#/components/securitySchemes/{name}"} for name in _security_schemes()],
            "bindings": copy.deepcopy(bindings),
        },
    }


def _security_schemes() -> dict[str, Any]:
    return {
        "scramSha512": {
            "type": "scramSha512",
            "description": "SASL_SSL, SCRAM-SHA-512: one user per principal.",
        },
        "scramSha256": {"type": "scramSha256", "description": "SASL_SSL, SCRAM-SHA-256."},
        "plain": {"type": "plain", "description": "SASL_SSL, PLAIN (managed services' API keys)."},
        "oauthBearer": {
            "type": "oauth2",
            "description": (
                "SASL_SSL, OAUTHBEARER by OIDC client credentials; the token's sub is the principal. "
                "PROVISION_KAFKA_OAUTH_TOKEN_URL names the real token endpoint."
            ),
            "flows": {
                "clientCredentials": {"tokenUrl": "https://issuer.example/token", "availableScopes": {}}
            },
        },
        "mutualTls": {
            "type": "X509",
            "description": "SSL with a client certificate: its CN is the principal.",
        },
    }
