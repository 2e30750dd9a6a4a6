"""A property-based fuzz of the committed OpenAPI document (Schemathesis) against the API on
the real database and broker: no request it generates gets a 500, and every answer has a
documented status, content type and body shape."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.bootstrap import App
from tests.api_server import RunningApi, serve_api
from tests.support import REPO_ROOT

# The live stream of a real project never ends by itself; tests/e2e/test_http_stream.py covers it.
schema = schemathesis.openapi.from_path(REPO_ROOT / "schemas" / "openapi.json").exclude(
    path_regex=r"/events$"
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzzed_api(app: App) -> Iterator[RunningApi]:
    """The API under fuzzing, with one token."""
    with serve_api(app) as running:
        yield running


@schema.parametrize()
# 40 a route in the suite; PROVISION_FUZZ_EXAMPLES asks for a longer run.
@settings(
    max_examples=int(os.environ.get("PROVISION_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_generated_request_gets_a_500_or_an_undocumented_answer(
    case: schemathesis.Case, fuzzed_api: RunningApi
) -> None:
    """Generated requests (with the token) get documented answers and never a 500."""
    case.call_and_validate(
        base_url=fuzzed_api.base_url,
        headers={"Authorization": f"Bearer {fuzzed_api.token}"},
        checks=CHECKS,
        timeout=30,
    )
