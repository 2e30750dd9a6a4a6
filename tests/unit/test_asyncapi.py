"""schemas/asyncapi.json: a valid AsyncAPI 3.0 document (by the AsyncAPI project's own parser, run
with Node) that says what the code does: its topics, messages, keys, headers and who sends what.

The parser (the npm package @asyncapi/parser, pinned below) is installed by the test itself into
``.provision/npm/`` and kept there, so only the first run pays for it. Without Node or npm the
test fails: the check is part of the suite, not optional.
"""

from __future__ import annotations

import functools
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from services.asyncapi import operations
from shared.domain import acls
from shared.domain.events import ParkedLetter, event_models
from shared.domain.steps import ALL_STEPS, DEADLETTER_TOPIC, LETTER_TOPICS, PARKED_TOPIC, all_topics
from shared.kafka.codec import encode, encode_dead_letter, encode_parked
from shared.tracing import new_trace
from tests import npm
from tests.event_samples import T0, dead_letter_sample, sample

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = REPO_ROOT / "schemas" / "asyncapi.json"
VALIDATE_JS = REPO_ROOT / "tests" / "asyncapi" / "validate.js"
PARSER_VERSION = "3.6.3"
PARSER_DIR = REPO_ROOT / ".provision" / "npm" / f"asyncapi-parser-{PARSER_VERSION}"
NODE_TIMEOUT = 300


@functools.cache
def _doc() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DOCUMENT.read_text())
    return document


WHY = "the AsyncAPI document is checked with Node's @asyncapi/parser"


def _tool(name: str) -> str:
    return npm.tool(name, why=WHY)


@pytest.fixture(scope="module")
def parser_dir() -> Path:
    """The directory whose node_modules holds @asyncapi/parser, installed on first use."""
    return npm.installed(PARSER_DIR, [f"@asyncapi/parser@{PARSER_VERSION}"], why=WHY, timeout=NODE_TIMEOUT)


BROKEN = {
    "asyncapi": "3.0.0",
    "info": {"title": "broken", "version": "1.0.0"},
    "channels": {"a": {"address": "a"}},
    "operations": {"x": {"action": "send", "channel": {"$ref": "#/channels/missing"}}},
}
"""An operation on a channel that does not exist."""


@pytest.fixture(scope="module")
def parsed(parser_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What the parser says of schemas/asyncapi.json and of BROKEN (one Node run: it starts slowly)."""
    broken = tmp_path_factory.mktemp("asyncapi") / "broken.json"
    broken.write_text(json.dumps(BROKEN))
    done = subprocess.run(
        [_tool("node"), str(VALIDATE_JS), str(parser_dir), str(DOCUMENT), str(broken)],
        capture_output=True, text=True, timeout=NODE_TIMEOUT, check=False,
    )  # fmt: skip
    lines = done.stdout.splitlines()
    assert len(lines) == 2, f"the parser said {done.stdout[-2000:]!r}; stderr: {done.stderr[-2000:]}"
    return [json.loads(line) for line in lines]


def test_the_document_is_valid_asyncapi_3(parsed: list[dict[str, Any]]) -> None:
    """@asyncapi/parser parses schemas/asyncapi.json as AsyncAPI 3.0 with no error diagnostic, and
    sees every topic, message and operation."""
    result = parsed[0]
    errors = [d for d in result.get("diagnostics", []) if d["severity"] == "error"]
    assert errors == [], json.dumps(errors[:20], indent=1)
    assert result["parsed"], result
    assert result["version"] == "3.0.0"
    assert result["channels"] == len(all_topics())
    assert result["messages"] == len(event_models())
    assert result["operations"] == len(operations())


def test_the_parser_reports_a_broken_document(parsed: list[dict[str, Any]]) -> None:
    """The check has teeth: an operation on a channel that does not exist is an error diagnostic."""
    assert any(d["severity"] == "error" for d in parsed[1]["diagnostics"]), parsed[1]


def test_every_topic_is_a_channel_with_its_message() -> None:
    """Each topic is a channel at its own address, carrying the message of its event type, whose
    payload, headers and Kafka key are described."""
    doc = _doc()
    assert set(doc["channels"]) == set(all_topics())
    for topic, channel in doc["channels"].items():
        assert channel["address"] == topic
        ((message_id, ref),) = channel["messages"].items()
        assert ref == {"$ref": f"#/components/messages/{message_id}"}
        message = doc["components"]["messages"][message_id]
        assert message["name"] == topic
        assert (
            message["payload"]["$ref"].removeprefix("#/components/schemas/") in doc["components"]["schemas"]
        )
        assert "key" in message["bindings"]["kafka"]
        assert message["headers"]["allOf"][1]["properties"]["ce_type"] == {"const": topic}


def _validator(schema_name: str) -> Draft202012Validator:
    root = {"$ref": f"#/components/schemas/{schema_name}", "components": _doc()["components"]}
    return Draft202012Validator(root, format_checker=FormatChecker())


@pytest.mark.parametrize("event_type", [t for t in event_models() if t not in LETTER_TOPICS])
def test_what_the_encoder_writes_is_what_the_document_says(event_type: str) -> None:
    """An encoded event's value matches its message's payload schema, its key the key schema, and
    its headers are exactly the documented ones, each matching its schema."""
    event = sample(event_type)
    key, value, headers = encode(event, new_trace())
    message = _doc()["components"]["messages"][type(event).__name__]
    assert list(_validator(type(event).__name__).iter_errors(json.loads(value))) == []
    assert list(_validator("ProjectKey").iter_errors(key.decode())) == []
    text = {name: raw.decode() for name, raw in headers if isinstance(raw, bytes)}
    assert set(text) == set(_doc()["components"]["schemas"]["EventHeaders"]["properties"])
    assert list(_validator("EventHeaders").iter_errors(text)) == []
    assert message["headers"]["allOf"][1]["properties"]["event_type"] == {"const": text["event_type"]}


def test_a_parked_letter_is_what_the_document_says() -> None:
    """An encoded parked letter's value, key and headers match the parked message's schemas."""
    parked = ParkedLetter(
        event_id=uuid.uuid4(),
        occurred_at=T0,
        letter_id="2:7",
        reason="failed again",
        letter=dead_letter_sample(),
    )
    key, value, headers = encode_parked(parked, b"acme-app")
    assert list(_validator("ParkedLetter").iter_errors(json.loads(value))) == []
    assert list(_validator("DeadLetterKey").iter_errors(key.decode())) == []
    text = {name: raw.decode() for name, raw in headers if isinstance(raw, bytes)}
    assert set(text) == set(_doc()["components"]["schemas"]["DeadLetterHeaders"]["properties"])
    assert list(_validator("DeadLetterHeaders").iter_errors(text)) == []
    assert (text["ce_type"], text["ce_subject"]) == (PARKED_TOPIC, "provisioning.deadletter/2/7")


def test_a_dead_letter_is_what_the_document_says() -> None:
    """An encoded dead letter's value, key and headers match the dead-letter message's schemas."""
    key, value, headers = encode_dead_letter(dead_letter_sample())
    assert list(_validator("DeadLettered").iter_errors(json.loads(value))) == []
    assert list(_validator("DeadLetterKey").iter_errors(key.decode())) == []
    text = {name: raw.decode() for name, raw in headers if isinstance(raw, bytes)}
    assert set(text) == set(_doc()["components"]["schemas"]["DeadLetterHeaders"]["properties"])
    assert list(_validator("DeadLetterHeaders").iter_errors(text)) == []


NOT_GRANTED: set[tuple[str, str, str]] = set()
"""Operations the ACL set does not allow (none)."""


def test_every_operation_is_allowed_by_the_acls() -> None:
    """Whoever the document says sends (receives) a topic holds WRITE (READ) on it in the ACL set,
    but for the operator's reading of the dead letters, which no grant covers yet."""
    held = {(g.principal, g.name, g.operation) for g in acls.acl_table()}
    missing = set()
    for op in operations():
        needed = acls.Operation.WRITE if op.action == "send" else acls.Operation.READ
        if (acls.principal(op.role), op.topic, needed) not in held:
            missing.add((op.role, op.action, op.topic))
    assert missing == NOT_GRANTED


def test_every_step_is_described_on_both_sides() -> None:
    """Every step receives its input and retries in its own group and sends its outcomes."""
    doc = _doc()["operations"]
    for step in ALL_STEPS:
        receive = doc[f"{step.key}-receive-{step.input_topic}"]
        assert receive["bindings"]["kafka"]["groupId"] == {"type": "string", "const": step.consumer_group}
        assert receive["tags"] == [{"name": acls.user_name(step.service)}]
        for topic in (step.completed_topic, step.retry_topic, step.failed_topic, DEADLETTER_TOPIC):
            assert doc[f"{step.key}-send-{topic}"]["action"] == "send"
    assert doc[f"{acls.OPERATOR}-receive-{DEADLETTER_TOPIC}"]["action"] == "receive"
