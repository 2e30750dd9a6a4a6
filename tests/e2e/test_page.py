"""The live page in a real headless Chromium against the real HTTP API, broker, database and
step workers (separate OS processes): steps fill in as they happen, a failure shows its cause
and remedy, and the replay button re-drives it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, ViewportSize, expect

from services.bootstrap import App
from services.web.app import create_api
from services.web.auth import TokenSet, new_token
from shared.domain.steps import STEP_NAMES
from tests.api_server import serving
from tests.browser import chromium
from tests.e2e.faults import ServiceStandIn, service_stand_in
from tests.support import REPO_ROOT, WorkerGroup, unique_project

pytestmark = pytest.mark.e2e

ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
REGION = "eu-west-1"
# The page has to show what the database knows within this long (ms) of it happening.
SHOWN_WITHIN_MS = 60_000


def _call(
    base_url: str, method: str, path: str, body: object = None, token: str | None = None
) -> tuple[int, Any]:
    """One JSON request to the API: (status, decoded body)."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    response = httpx.request(method, f"{base_url}{path}", json=body, headers=headers, timeout=30)
    return response.status_code, response.json()


def _request_project(base_url: str, token: str | None = None) -> str:
    """Ask the API for a new project; returns its id."""
    project_id = unique_project("page")
    status, body = _call(
        base_url, "POST", "/v1/projects", {"project_id": project_id, "region": REGION}, token=token
    )
    assert status == 202, f"POST /v1/projects answered {status}: {body}"
    return project_id


def _rows(page: Page) -> dict[str, str | None]:
    """Every provisioning row on the page: step name -> data-status."""
    return {
        str(row.get_attribute("data-step")): row.get_attribute("data-status")
        for row in page.locator("#chain-provisioning tr[data-step]").all()
    }


def _screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True, animations="disabled")
    return path


@pytest.fixture
def stand_in() -> Iterator[ServiceStandIn]:
    """The auth, realtime and storage services, stood in on a loopback port."""
    with service_stand_in() as services:
        yield services


@pytest.fixture
def registering_workers(
    app: App, workers: WorkerGroup, stand_in: ServiceStandIn, state_dir: Path
) -> WorkerGroup:
    """The seven workers, registering tenants through the stand-in services."""
    workers.settings = stand_in.settings_for(app, state_dir)
    workers.start()
    return workers


@pytest.fixture
def open_api(app: App) -> Iterator[str]:
    """The HTTP API on the session's app, with no token needed (--insecure-local)."""
    with serving(create_api(app, tokens=None, insecure_local=True)) as base_url:
        yield base_url


def test_the_page_shows_the_seven_steps_turning_to_success_live(
    open_api: str, registering_workers: WorkerGroup
) -> None:
    """A project opened on the page right after its request: its seven rows go to success and
    the stage reads COMPLETED, with no reload."""
    project_id = _request_project(open_api)
    with chromium() as browser:
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(f"{open_api}/?project={project_id}")
        expect(page.locator("#project-id")).to_have_text(project_id)
        expect(page.locator("#chain-provisioning tr[data-step]")).to_have_count(len(STEP_NAMES))
        assert list(_rows(page)) == list(STEP_NAMES), "one row per step, in chain order"
        for name in STEP_NAMES:
            expect(page.locator(f'tr[data-step="{name}"]')).to_have_attribute(
                "data-status", "success", timeout=SHOWN_WITHIN_MS
            )
        expect(page.locator("#stage")).to_have_attribute("data-stage", "COMPLETED", timeout=SHOWN_WITHIN_MS)
        expect(page.locator("#stage")).to_have_text("COMPLETED")
        expect(page.locator("#chain-deprovisioning")).to_be_hidden()
        expect(page.locator("#replay")).to_be_hidden()
        for name in STEP_NAMES:
            row = page.locator(f'tr[data-step="{name}"]')
            expect(row.locator(".attempts")).to_have_text("1")
            expect(row.locator(".duration")).not_to_have_text("—")
        _screenshot(page, "page-live.png")


def test_the_page_shows_a_failed_steps_error_and_remedy_and_replays_it(
    open_api: str, registering_workers: WorkerGroup, stand_in: ServiceStandIn
) -> None:
    """The auth service refuses the tenant: the page shows the failed row with the error's type,
    message and remediation as the API reports them, and the replay button; once the service is
    fixed, the button brings the project to COMPLETED."""
    stand_in.reject.add("auth")
    project_id = _request_project(open_api)
    failed = "register_auth_service"
    with chromium() as browser:
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(f"{open_api}/#{project_id}")
        expect(page.locator(f'tr[data-step="{failed}"]')).to_have_attribute(
            "data-status", "failed", timeout=SHOWN_WITHIN_MS
        )
        expect(page.locator("#stage")).to_have_attribute("data-stage", "FAILED", timeout=SHOWN_WITHIN_MS)

        status, view = _call(open_api, "GET", f"/v1/projects/{project_id}")
        assert status == 200
        error = next(step["error"] for step in view["steps"] if step["name"] == failed)
        assert error is not None and error["type"] == "SERVICE_REGISTRATION_FAILED"
        shown = page.locator(f'tr[data-error-for="{failed}"]')
        expect(shown).to_be_visible()
        expect(shown.locator(".err-type")).to_have_text(error["type"])
        expect(shown.locator(".err-message")).to_have_text(error["message"])
        expect(shown.locator(".err-remediation")).to_have_text(error["remediation"])
        rows = _rows(page)
        assert rows["create_tenant_database"] == rows["create_tenant_schema"] == "success"
        assert all(rows[name] == "pending" for name in STEP_NAMES[3:]), rows
        assert page.locator("tr.error-row:not([hidden])").count() == 1, "only the failed step shows an error"
        expect(page.locator("#replay")).to_be_visible()
        _screenshot(page, "page-failed.png")

        stand_in.reject.clear()
        page.locator("#replay").click()
        expect(page.locator("#replay-note")).to_have_text("Replayed 1 step.")
        for name in STEP_NAMES:
            expect(page.locator(f'tr[data-step="{name}"]')).to_have_attribute(
                "data-status", "success", timeout=SHOWN_WITHIN_MS
            )
        expect(page.locator("#stage")).to_have_attribute("data-stage", "COMPLETED", timeout=SHOWN_WITHIN_MS)
        expect(shown).to_be_hidden()
        expect(page.locator("#replay")).to_be_hidden()


def test_an_unknown_project_is_reported_as_such(open_api: str) -> None:
    """A project id the API does not know: the page says so and shows no table."""
    missing = unique_project("nobody")
    with chromium() as browser:
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(f"{open_api}/?project={missing}")
        expect(page.locator("#message")).to_contain_text(f"No project with id \u201c{missing}\u201d")
        expect(page.locator("#view")).to_be_hidden()


def test_a_token_typed_into_the_page_opens_a_guarded_project(app: App) -> None:
    """With tokens required, the page first asks for one; a wrong one is refused, the right one
    is kept for the tab and shows the project's table."""
    token, entry = new_token("page-test")
    api = create_api(app, tokens=TokenSet.parse([entry], source="test"), insecure_local=False)
    with serving(api) as base_url:
        assert _call(base_url, "GET", "/v1/projects/anything")[0] == 401, "the API wants a token"
        project_id = _request_project(base_url, token=token)
        with chromium() as browser:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(f"{base_url}/?project={project_id}")
            expect(page.locator("#token")).to_be_visible()
            expect(page.locator("#view")).to_be_hidden()

            page.locator("#token").fill("ptk_not-the-token")
            page.locator("#token-form button").click()
            expect(page.locator("#token-reason")).to_contain_text("refused")
            expect(page.locator("#view")).to_be_hidden()

            page.locator("#token").fill(token)
            page.locator("#token-form button").click()
            expect(page.locator("#token-box")).to_be_hidden()
            expect(page.locator("#chain-provisioning tr[data-step]")).to_have_count(len(STEP_NAMES))
            expect(page.locator("#project-id")).to_have_text(project_id)
            assert page.evaluate("sessionStorage.getItem('provision.apiToken')") == token
