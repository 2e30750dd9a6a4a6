"""The HTTP API's pieces that need no server: tokens, the stream's framing and ids, the ETA,
the error a step carries, the body guard, and the `api` / `api-token` commands' refusals."""

from __future__ import annotations

import asyncio
import json
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from services.bootstrap import App
from services.cli import app as cli
from services.web.app import create_api
from services.web.auth import (
    NO_TOKENS,
    TokenConfigError,
    TokenSet,
    hash_token,
    legacy_warning,
    load_tokens,
    new_token,
)
from services.web.guard import ApiMetrics, Guard
from services.web.server import is_loopback
from services.web.stream import ProjectStream, TransitionListener, _sse, parse_last_event_id, transition_event
from services.web.views import eta_seconds, step_error, step_states
from shared.domain.records import StepRow, StepTransition
from shared.domain.steps import REVERSE_STEPS, STEPS, Stage, StepStatus
from shared.settings import Settings

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def test_new_token_entry_verifies_its_token_and_no_other() -> None:
    """A token made for a caller is recognised by its entry; another token, empty or huge is not."""
    token, entry = new_token("dashboard", ["read"])
    assert token.startswith("ptk_") and len(token) > 40
    tokens = TokenSet.parse([entry], source="test")
    assert tokens.caller(token) == "dashboard"
    assert tokens.caller(token + "x") is None
    assert tokens.caller("") is None
    assert tokens.caller("x" * 10_000) is None
    assert entry == f"dashboard:read={hash_token(token)}"
    assert token not in entry


def test_each_caller_is_told_apart() -> None:
    """Two callers' tokens each name their own caller."""
    (a, entry_a), (b, entry_b) = new_token("a", ["read"]), new_token("b", ["read"])
    tokens = TokenSet.parse(["# comment", "", entry_a, entry_b], source="test")
    assert (tokens.caller(a), tokens.caller(b), len(tokens)) == ("a", "b", 2)


@pytest.mark.parametrize(
    ("entries", "says"),
    [
        (["dashboard=plaintext-token"], "entry 1"),
        (["dashboard=sha256:" + "0" * 63], "entry 1"),
        (["a=sha256:" + "0" * 64, "a=sha256:" + "1" * 64], "configured twice"),
        (["a=sha256:" + "0" * 64, "b=sha256:" + "0" * 64], "share a token"),
        (["a:read+write=sha256:" + "0" * 64], "unknown scope 'write'"),
        (["a:read:everything=sha256:" + "0" * 64], "'everything' where only 'all-projects'"),
        (["a::all-projects=sha256:" + "0" * 64], "entry 1"),
        (["a:read,provision=sha256:" + "0" * 64], "entry 1"),
    ],
)
def test_bad_token_entries_are_refused_in_one_line(entries: list[str], says: str) -> None:
    """A plaintext, short, duplicated or shared entry, an unknown scope or mode, or no scope is
    refused in one line, naming what is wrong."""
    with pytest.raises(TokenConfigError, match=says) as raised:
        TokenSet.parse(entries, source="PROVISION_API_TOKENS")
    assert "\n" not in str(raised.value)


def test_an_entry_carries_its_scopes_and_owner_mode() -> None:
    """A scoped entry gives its caller those scopes, owner-scoped unless :all-projects; admin sees all."""
    (a, entry_a), (b, entry_b), (c, entry_c) = (
        new_token("a", ["read", "provision"]),
        new_token("b", ["read+replay"], all_projects=True),
        new_token("c", ["admin"]),
    )
    assert entry_a.startswith("a:read+provision=sha256:")
    assert entry_b.startswith("b:read+replay:all-projects=sha256:")
    tokens = TokenSet.parse([entry_a, entry_b, entry_c], source="test")
    caller_a, caller_b, caller_c = (tokens.identify(t) for t in (a, b, c))
    assert caller_a is not None and caller_b is not None and caller_c is not None
    assert (caller_a.scopes, caller_a.owner) == (frozenset({"read", "provision"}), "a")
    assert not caller_a.allows("deprovision") and caller_a.sees("a") and not caller_a.sees("b")
    assert (caller_b.owner, caller_b.sees(None), caller_b.allows("provision")) == (None, True, False)
    assert (caller_c.owner, caller_c.allows("deprovision"), caller_c.sees("a")) == (None, True, True)
    assert tokens.legacy == () and legacy_warning(tokens) is None


def test_a_legacy_entry_counts_as_admin_and_is_warned_of() -> None:
    """An entry of the old form (no scopes) keeps what it could do, as admin, and is named in
    the one-line start-up warning."""
    token = "old-token"
    tokens = TokenSet.parse([f"dashboard={hash_token(token)}"], source="test")
    found = tokens.identify(token)
    assert found is not None
    assert (found.name, found.allows("deprovision"), found.owner) == ("dashboard", True, None)
    assert tokens.legacy == ("dashboard",)
    warning = legacy_warning(tokens)
    assert warning is not None and "'dashboard'" in warning and "\n" not in warning


def test_a_token_for_an_unknown_or_no_scope_is_refused() -> None:
    """new_token refuses an unknown scope and an empty list of scopes, naming the scopes there are."""
    with pytest.raises(TokenConfigError, match=r"unknown scope 'write'.*read, provision"):
        new_token("a", ["write"])
    with pytest.raises(TokenConfigError, match="at least one scope"):
        new_token("a", [])


def test_tokens_come_from_the_variable_and_the_file(tmp_path: Path) -> None:
    """PROVISION_API_TOKENS (comma-separated) and PROVISION_API_TOKENS_FILE (a line each) add up."""
    (a, entry_a), (b, entry_b), (c, entry_c) = (new_token(n, ["read"]) for n in "abc")
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"# callers\n{entry_c}\n")
    settings = Settings(api_tokens=f"{entry_a},{entry_b}", api_tokens_file=tokens_file)
    tokens = load_tokens(settings)
    assert [tokens.caller(t) for t in (a, b, c)] == ["a", "b", "c"]
    assert len(load_tokens(Settings())) == 0


def test_a_missing_tokens_file_is_one_line(tmp_path: Path) -> None:
    """A tokens file that cannot be read is a TokenConfigError naming it."""
    with pytest.raises(TokenConfigError, match="PROVISION_API_TOKENS_FILE"):
        load_tokens(Settings(api_tokens_file=tmp_path / "absent"))


def test_the_api_will_not_be_built_without_a_token() -> None:
    """create_api refuses an empty token set unless insecure_local, before touching anything."""
    offline = App(Settings(), "unused:9092", "postgresql://x@127.0.0.1:1/x", "postgresql://x@127.0.0.1:1/x")
    with pytest.raises(TokenConfigError, match="no API token"):
        create_api(offline, tokens=None)
    with pytest.raises(TokenConfigError):
        create_api(offline, tokens=TokenSet({}))


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),  # noqa: S104 - the address is the input
        ("10.0.0.5", False),
        ("api.example", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    """Only localhost and loopback addresses count as local for --insecure-local."""
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("value", "expected"), [(None, None), ("", None), ("  ", None), ("0", 0), ("42", 42)]
)
def test_last_event_id_parses(value: str | None, expected: int | None) -> None:
    """An absent or blank Last-Event-ID is None; digits are the id."""
    assert parse_last_event_id(value) == expected


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "9" * 19, "١٢"])
def test_last_event_id_that_is_no_id_is_refused(value: str) -> None:
    """Anything but a short run of ASCII digits is a ValueError."""
    with pytest.raises(ValueError, match="Last-Event-ID"):
        parse_last_event_id(value)


def test_sse_framing() -> None:
    """An event is id, event and one data line of compact JSON, then a blank line."""
    text = _sse({"stage": "COMPLETED", "note": "a\nb"}, event="end", id=7)
    assert text == 'id: 7\nevent: end\ndata: {"stage":"COMPLETED","note":"a\\nb"}\n\n'
    assert _sse({"x": 1}, event="stage").startswith("event: stage\n")


def test_a_failed_transition_carries_its_error_and_remediation() -> None:
    """A failed transition's event names the error type, message and what to do."""
    transition = StepTransition(
        5,
        STEPS[2].name,
        3,
        "running",
        "failed",
        3,
        "auth answered 400",
        {"type": "SERVICE_REGISTRATION_FAILED"},
        NOW,
    )
    event = transition_event("p1", transition)
    assert event["service"] == "auth" and event["chain"] == "provisioning"
    assert event["error"]["type"] == "SERVICE_REGISTRATION_FAILED"
    assert "provision replay" in event["error"]["remediation"]
    json.dumps(event)


def test_step_error_only_for_failed_and_unknown_types_have_no_remedy() -> None:
    """A step that is not failed has no error; an unknown error type has no remediation."""
    assert step_error("running", "x", {"type": "TIMEOUT"}) is None
    error = step_error("failed", "odd", {"type": "SOMETHING_NEW"})
    assert error is not None and error.remediation is None
    assert step_error("failed", "plain", None) is not None


def _row(step_name: str, position: int, status: StepStatus, started: datetime | None = None) -> StepRow:
    return StepRow(
        id=None,  # type: ignore[arg-type]
        project_id="p1",
        step_name=step_name,
        position=position,
        status=status,
        started_at=started,
        completed_at=None,
        error_message=None,
        error_details=None,
        retry_count=0,
        replay_count=0,
        attempt=1 if started else 0,
        lease_owner=None,
        lease_expires_at=None,
        result=None,
        created_at=NOW,
        updated_at=NOW,
    )


def test_eta_sums_the_remaining_medians_less_what_the_running_step_has_run() -> None:
    """Done steps count nothing, the running one its median less its run time, pending ones their median."""
    statuses = [StepStatus.SUCCESS, StepStatus.RUNNING] + [StepStatus.PENDING] * 5
    rows = [
        _row(s.name, s.position, st, NOW - timedelta(seconds=0.5) if st is StepStatus.RUNNING else None)
        for s, st in zip(STEPS, statuses, strict=True)
    ]
    medians = {s.name: 1.0 for s in STEPS}
    assert eta_seconds(step_states(rows), Stage.CREATING_SCHEMA, medians, NOW) == pytest.approx(0.5 + 5)


def test_eta_is_none_when_terminal_or_unknown_and_follows_the_reverse_chain() -> None:
    """No ETA at a terminal stage or without medians; once deprovisioning, the reverse steps count."""
    rows = [_row(s.name, s.position, StepStatus.PENDING) for s in STEPS]
    assert eta_seconds(step_states(rows), Stage.COMPLETED, {STEPS[0].name: 1.0}, NOW) is None
    assert eta_seconds(step_states(rows), Stage.INITIALIZING, {}, NOW) is None
    reverse = [_row(s.name, s.position, StepStatus.PENDING) for s in REVERSE_STEPS]
    medians = {s.name: 2.0 for s in REVERSE_STEPS} | {s.name: 100.0 for s in STEPS}
    assert eta_seconds(step_states(rows + reverse), Stage.DEPROVISIONING, medians, NOW) == pytest.approx(14.0)


def _guarded(limit: int = 100) -> TestClient:
    inner = FastAPI()

    @inner.post("/echo")
    async def echo(request: Request) -> dict[str, Any]:
        return {"size": len(await request.body())}

    inner.add_middleware(Guard, limit=limit, metrics=ApiMetrics())  # as create_api does
    return TestClient(inner)


def test_guard_refuses_a_declared_or_streamed_body_over_the_limit() -> None:
    """A body over the limit is 413 with a JSON error whether declared or chunked; under it passes."""
    client = _guarded()
    assert client.post("/echo", content=b"x" * 100).json() == {"size": 100}
    declared = client.post("/echo", content=b"x" * 101)
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "payload_too_large"
    streamed = client.post("/echo", content=iter([b"x" * 60, b"x" * 60]))
    assert streamed.status_code == 413
    bogus = client.post("/echo", content=b"x", headers={"Content-Length": "abc"})
    assert bogus.status_code in (400, 413)


def _cli(*args: str, **env: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        cli, list(args), env={"KAFKA_BOOTSTRAP_SERVERS": "", "DATABASE_URL": "", **env}
    )
    return result.exit_code, result.output


def test_api_command_refuses_without_tokens_or_insecure_on_a_public_address() -> None:
    """`provision api` exits 2 in one line without a token, with a bad entry, or insecure on 0.0.0.0."""
    code, output = _cli("api", PROVISION_API_TOKENS="")
    assert code == 2 and output.strip().count("\n") == 0 and "no API token" in output
    assert NO_TOKENS.split(":")[0] in output
    code, output = _cli("api", "--insecure-local", "--host", "0.0.0.0")  # noqa: S104
    assert code == 2 and "loopback" in output
    code, output = _cli("api", PROVISION_API_TOKENS="me=secret")
    assert code == 2 and "entry 1" in output and "secret" not in output.split("(")[-1]


def test_api_token_command_prints_a_token_and_its_entry() -> None:
    """`provision api-token` prints a token and the entry that holds only its hash and scopes; a
    bad name, an unknown scope or none exits 2 in one line."""
    code, output = _cli("api-token", "ops", "--scope", "read", "--scope", "replay", "--all-projects")
    assert code == 0
    token = output.split("token: ")[1].split()[0]
    entry = output.split("entry: ")[1].split()[0]
    assert entry.startswith("ops:read+replay:all-projects=sha256:")
    found = TokenSet.parse([entry], source="t").identify(token)
    assert found is not None and (found.name, found.scopes, found.owner) == (
        "ops",
        frozenset({"read", "replay"}),
        None,
    )
    for bad in (["two words", "--scope", "read"], ["ops", "--scope", "nope"], ["ops"]):
        code, output = _cli("api-token", *bad)
        assert code == 2 and output.strip().count("\n") == 0, (bad, output)
    assert "unknown scope 'nope'" in _cli("api-token", "ops", "--scope", "nope")[1]


def test_with_the_database_gone_every_route_answers_503_not_500() -> None:
    """With nothing listening at the database's address, /healthz and the /v1 routes answer 503
    with a JSON code, never a 500 or a hang."""
    gone = App(Settings(), "127.0.0.1:1", "postgresql://x@127.0.0.1:1/x", "postgresql://x@127.0.0.1:1/x")
    api = create_api(gone, tokens=None, insecure_local=True)
    with TestClient(api) as client:
        health = client.get("/healthz")
        assert health.status_code == 503
        assert health.json()["database"] is False
        project = "3f1c2a9e-7d41-4c8a-9a57-0c7f9a1b2c3d"
        for method, path in [
            ("GET", f"/v1/projects/{project}"),
            ("GET", f"/v1/projects/{project}/events"),
            ("GET", "/v1/projects"),
            ("DELETE", f"/v1/projects/{project}"),
        ]:
            response = client.request(method, path)
            assert response.status_code == 503, (method, path, response.text)
            assert response.json()["error"]["code"] == "store_unavailable"
    gone.close()


def test_a_stream_whose_database_goes_away_ends_quietly() -> None:
    """A stream that cannot read the log ends without an event or an exception (the client resumes)."""
    gone = App(Settings(), "127.0.0.1:1", "postgresql://x@127.0.0.1:1/x", "postgresql://x@127.0.0.1:1/x")
    stream = ProjectStream("p1", 0, gone.read_models, TransitionListener(gone.database_url), lambda: {})

    async def collect() -> list[str]:
        return [chunk async for chunk in stream.events()]

    try:
        assert asyncio.run(collect()) == []
    finally:
        gone.close()


def test_api_command_on_a_port_in_use_is_one_line_and_exit_2() -> None:
    """`provision api` on a port another process listens on exits 2 with one line naming it."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, output = _cli("api", "--insecure-local", "--port", str(port))
    assert code == 2, output
    assert output.strip().count("\n") == 0
    assert f"127.0.0.1:{port}" in output and "in use" in output
