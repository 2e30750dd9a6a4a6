"""The live page in a real headless Chromium against the real HTTP API, broker, database and
step workers (separate OS processes): steps fill in as they happen, a failure shows its cause
and remedy, and the replay button re-drives it; with no project open, the landing view lists
the projects that need an operator; a deleted project's view offers its restore; a token
lacking a route's scope (403) is told so by the page, which neither loops asking for a token
nor retries the refused read."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Locator, Page, Route, ViewportSize, expect
from sqlalchemy import text

from services.bootstrap import App
from services.usecases.requests import request_deprovisioning
from services.web.app import create_api
from services.web.auth import TokenSet, new_token
from shared.domain.payloads import ProvisionProjectPayload
from shared.domain.steps import STEP_NAMES, Stage
from tests.api_server import serving
from tests.browser import chromium
from tests.e2e.faults import ServiceStandIn, service_stand_in
from tests.isolated_plane import Plane
from tests.support import REPO_ROOT, WorkerGroup, stages, unique_project, wait_for, wait_until_stage

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
    token, entry = new_token("page-test", ["admin"])
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


# --- the landing view, and a deleted project's view ---------------------------------------


def _attention_row(page: Page, project_id: str) -> Locator:
    """The landing view's row of ``project_id`` (whatever other projects the session left)."""
    return page.locator(f'#attention tr[data-project="{project_id}"]')


def _listed(page: Page) -> None:
    """Wait until the landing view has read the list at least once since it was shown."""
    expect(page.locator("#landing")).to_be_visible()
    expect(page.locator("#landing-status")).to_contain_text("updated", timeout=SHOWN_WITHIN_MS)


def _failing_project(base_url: str, app: App, stand_in: ServiceStandIn) -> str:
    """A project whose auth registration is refused for good: FAILED at its third step."""
    stand_in.reject.add("auth")
    project_id = _request_project(base_url)
    wait_until_stage(app, [project_id], Stage.FAILED, timeout=SHOWN_WITHIN_MS / 1000)
    stand_in.reject.clear()
    return project_id


def _deleted_project(base_url: str, app: App) -> str:
    """A project provisioned, then deprovisioned through the API: DELETED, restorable."""
    project_id = _request_project(base_url)
    wait_until_stage(app, [project_id], timeout=90)
    status, body = _call(base_url, "DELETE", f"/v1/projects/{project_id}?reason=page+test")
    assert status == 202, f"DELETE answered {status}: {body}"
    wait_until_stage(app, [project_id], Stage.DELETED, timeout=90)
    return project_id


def test_the_landing_view_lists_a_failed_project_and_its_link_opens_it(
    app: App, open_api: str, registering_workers: WorkerGroup, stand_in: ServiceStandIn
) -> None:
    """With no project open, a project that fails while the page is shown appears in the list
    (no reload) with its stage, a failed badge and how long it has been unchanged, beside the
    count per stage; its link opens its view, and going back shows the list again."""
    with chromium() as browser:
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(f"{open_api}/")
        _listed(page)
        expect(page.locator("#view")).to_be_hidden()
        project_id = _failing_project(open_api, app, stand_in)

        row = _attention_row(page, project_id)
        expect(row).to_be_visible(timeout=SHOWN_WITHIN_MS)
        expect(row).to_have_attribute("data-stage", "FAILED")
        expect(row.locator(".stage")).to_have_text("FAILED")
        expect(row.locator('.badge[data-status="failed"]')).to_have_text("failed")
        expect(row.locator(".badge[data-status=stuck], .badge[data-status=stranded]")).to_have_count(0)
        expect(row.locator(".unchanged")).to_have_text(re.compile(r"^\d+ (s|min)$"))
        expect(page.locator('#counts .count[data-stage="FAILED"] b')).to_have_text(re.compile(r"^[1-9]\d*$"))
        expect(page.locator("#attention-none")).to_be_hidden()
        _screenshot(page, "page-landing.png")

        row.locator("a").click()
        expect(page.locator("#landing")).to_be_hidden()
        expect(page.locator("#project-id")).to_have_text(project_id)
        expect(page.locator("#stage")).to_have_attribute("data-stage", "FAILED")
        expect(page.locator('tr[data-step="register_auth_service"]')).to_have_attribute(
            "data-status", "failed"
        )
        assert f"project={project_id}" in page.url

        page.go_back()
        _listed(page)
        expect(page.locator("#view")).to_be_hidden()
        expect(_attention_row(page, project_id)).to_be_visible()


def test_a_completed_project_is_not_listed_as_needing_attention(
    app: App, open_api: str, registering_workers: WorkerGroup
) -> None:
    """A project that reached COMPLETED has no row on the landing view, and the COMPLETED
    count is shown."""
    project_id = _request_project(open_api)
    wait_until_stage(app, [project_id], timeout=90)
    with chromium() as browser:
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(f"{open_api}/")
        _listed(page)
        expect(page.locator('#counts .count[data-stage="COMPLETED"] b')).to_have_text(
            re.compile(r"^[1-9]\d*$")
        )
        expect(_attention_row(page, project_id)).to_have_count(0)
        # The same after the next periodic read.
        page.wait_for_timeout(6000)
        expect(_attention_row(page, project_id)).to_have_count(0)


def test_an_empty_control_plane_says_nothing_needs_attention(plane: Plane) -> None:
    """On a control plane with no project, the landing view shows the calm line and no table."""
    with serving(create_api(plane.app, tokens=None, insecure_local=True)) as base_url, chromium() as browser:
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(f"{base_url}/")
        _listed(page)
        expect(page.locator("#attention-none")).to_have_text("Nothing needs attention.")
        expect(page.locator("#attention")).to_be_hidden()
        expect(page.locator("#counts .count")).to_have_count(0)


def test_the_landing_view_flags_a_stranded_project(plane: Plane) -> None:
    """A project whose first step is pending with no message to move it, unchanged for hours,
    is listed with its stage and a stranded badge, and its link opens it."""
    project_id = unique_project("stranded")
    payload = ProvisionProjectPayload.model_validate({"project_id": project_id, "region": REGION})
    plane.app.repository.register_request(payload, uuid.uuid4())  # recorded, never published
    with plane.app.engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE provisioning_steps SET updated_at = now() - interval '3 hours' WHERE project_id = :p"
            ),
            {"p": project_id},
        )
    with serving(create_api(plane.app, tokens=None, insecure_local=True)) as base_url, chromium() as browser:
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(f"{base_url}/")
        _listed(page)
        row = _attention_row(page, project_id)
        expect(row).to_be_visible()
        expect(row.locator('.badge[data-status="stranded"]')).to_have_text("stranded")
        expect(row.locator(".stage")).to_have_text("INITIALIZING")
        expect(row.locator(".unchanged")).to_have_text(re.compile(r"^3 h \d+ min$"))
        expect(page.locator('#counts .count[data-stage="INITIALIZING"] b')).to_have_text("1")
        row.locator("a").click()
        expect(page.locator("#project-id")).to_have_text(project_id)


def test_a_deleted_projects_view_offers_restore_and_restoring_brings_it_back(
    app: App, open_api: str, registering_workers: WorkerGroup
) -> None:
    """A deprovisioned project's view shows when it was deleted and until when it can be restored,
    with a Restore button; pressing it shows "Restoring…" and the page follows the provisioning
    chain live until the project is COMPLETED again."""
    project_id = _deleted_project(open_api, app)
    status, view = _call(open_api, "GET", f"/v1/projects/{project_id}")
    assert status == 200 and view["restorable"] is True, view
    with chromium() as browser:
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(f"{open_api}/?project={project_id}")
        expect(page.locator("#stage")).to_have_attribute("data-stage", "DELETED")
        notice = page.locator("#removal")
        expect(notice).to_be_visible()
        expect(notice).to_contain_text("Deleted at ")
        expect(notice).to_contain_text("It can be restored until ")
        expect(page.locator("#restore")).to_be_visible()
        expect(page.locator("#chain-deprovisioning")).to_be_visible()
        _screenshot(page, "page-deleted.png")

        page.locator("#restore").click()
        expect(page.locator("#restore-note")).to_have_text("Restoring…")
        for name in STEP_NAMES:
            expect(page.locator(f'tr[data-step="{name}"]')).to_have_attribute(
                "data-status", "success", timeout=SHOWN_WITHIN_MS
            )
        expect(page.locator("#stage")).to_have_attribute("data-stage", "COMPLETED", timeout=SHOWN_WITHIN_MS)
        expect(page.locator("#restore-note")).to_have_text("Restored.")
        expect(notice).to_be_hidden()
        expect(page.locator("#restore")).to_be_hidden()
        expect(page.locator("#chain-deprovisioning")).to_be_hidden()
    assert _call(open_api, "GET", f"/v1/projects/{project_id}")[1]["stage"] == "COMPLETED"


def test_a_refused_restore_shows_the_apis_reason(
    app: App, open_api: str, registering_workers: WorkerGroup
) -> None:
    """A project restored behind the page's back: pressing the page's Restore button shows the
    API's 409 message."""
    project_id = _deleted_project(open_api, app)
    with chromium() as browser:
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(f"{open_api}/?project={project_id}")
        expect(page.locator("#restore")).to_be_visible()
        # Behind its back only once it has settled: a stream still open would show the restore.
        expect(page.locator("#conn")).to_have_text("finished")
        status, _ = _call(open_api, "POST", f"/v1/projects/{project_id}/restore")
        assert status == 202
        status, refused = _call(open_api, "POST", f"/v1/projects/{project_id}/restore")
        assert status == 409, refused
        page.locator("#restore").click()
        expect(page.locator("#restore-note")).to_have_text(f"Restore refused: {refused['error']['message']}")
        wait_until_stage(app, [project_id], timeout=90)


def test_a_purged_projects_view_says_so_and_offers_no_restore(
    app: App, registering_workers: WorkerGroup
) -> None:
    """A project deleted with purge now: its view says when it was deleted and purged, and shows
    no Restore button."""
    with serving(create_api(app, tokens=None, insecure_local=True)) as base_url:
        project_id = _request_project(base_url)
        wait_until_stage(app, [project_id], timeout=90)
        request_deprovisioning(project_id, reason="page test", purge_now=True, app=app)
        wait_for(
            lambda: _call(base_url, "GET", f"/v1/projects/{project_id}")[1].get("purged_at"),
            timeout=90,
            message="the purge did not run",
        )
        with chromium() as browser:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(f"{base_url}/#{project_id}")
            notice = page.locator("#removal")
            expect(notice).to_be_visible()
            expect(notice).to_contain_text("Deleted at ")
            expect(notice).to_contain_text("Its archive was purged at ")
            expect(notice).to_contain_text("it cannot be restored")
            expect(page.locator("#restore")).to_be_hidden()


def test_the_landing_view_asks_for_a_token_and_then_lists(app: App) -> None:
    """With tokens required, the landing view asks for one before it can list; given it, the
    list is read (the counts show the project just requested)."""
    token, entry = new_token("page-landing", ["admin"])
    api = create_api(app, tokens=TokenSet.parse([entry], source="test"), insecure_local=False)
    with serving(api) as base_url, chromium() as browser:
        _request_project(base_url, token=token)
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(f"{base_url}/")
        expect(page.locator("#token-reason")).to_have_text("This API needs a token to list projects.")
        expect(page.locator("#landing-status")).not_to_contain_text("updated")

        page.locator("#token").fill(token)
        page.locator("#token-form button").click()
        _listed(page)
        expect(page.locator("#token-box")).to_be_hidden()
        expect(page.locator("#counts .count").first).to_be_visible()


# --- a token that lacks a route's scope ------------------------------------------------------


def _with_token(page: Page, token: str) -> None:
    """The tab starts with ``token`` kept, as if typed into the page before."""
    page.add_init_script(f"sessionStorage.setItem('provision.apiToken', {json.dumps(token)})")


def _requests_to(page: Page, suffix: str) -> list[str]:
    """The URLs of the page's requests whose path ends with ``suffix``, as they are made."""
    seen: list[str] = []
    page.on(
        "request",
        lambda request: seen.append(request.url) if request.url.split("?")[0].endswith(suffix) else None,
    )
    return seen


def test_a_read_only_token_is_told_the_replay_needs_its_scope(
    app: App, open_api: str, registering_workers: WorkerGroup, stand_in: ServiceStandIn
) -> None:
    """A token with only ``read`` on a failed project: pressing replay shows the API's 403 message
    by the button and asks for no token, the steps and the failure stay shown; asked for by the
    user, another token (``admin``) replays it to COMPLETED."""
    project_id = _failing_project(open_api, app, stand_in)
    reader, reader_entry = new_token("page-reader", ["read"], all_projects=True)
    admin, admin_entry = new_token("page-admin", ["admin"])
    tokens = TokenSet.parse([reader_entry, admin_entry], source="test")
    with serving(create_api(app, tokens=tokens, insecure_local=False)) as base_url:
        body = {"project_id": project_id, "dry_run": False}
        status, refused = _call(base_url, "POST", "/v1/replays", body, token=reader)
        assert status == 403 and refused["error"]["code"] == "forbidden", refused
        message = refused["error"]["message"]
        assert message == "this token lacks the 'replay' scope"
        with chromium() as browser:
            page = browser.new_page(viewport=VIEWPORT)
            _with_token(page, reader)
            page.goto(f"{base_url}/?project={project_id}")
            expect(page.locator("#stage")).to_have_attribute("data-stage", "FAILED")
            expect(page.locator("#conn")).to_have_text("finished")
            page.locator("#replay").click()
            note = page.locator("#replay-note")
            expect(note).to_have_text(f"Replay not allowed: {message}. Use another token")
            expect(note).to_have_attribute("data-tone", "error")
            page.wait_for_timeout(2000)  # nothing asks for a token, nor clears the refusal, later
            expect(note).to_be_visible()
            expect(page.locator("#token-box")).to_be_hidden()
            expect(page.locator("#message")).to_be_hidden()
            expect(page.locator("#chain-provisioning tr[data-step]")).to_have_count(len(STEP_NAMES))
            expect(page.locator('tr[data-step="register_auth_service"]')).to_have_attribute(
                "data-status", "failed"
            )
            expect(page.locator('tr[data-error-for="register_auth_service"]')).to_be_visible()
            expect(page.locator("#replay")).to_be_enabled()
            _screenshot(page, "page-replay-forbidden.png")
            assert stages(app, [project_id])[project_id] is Stage.FAILED, "nothing was replayed"

            note.locator("button.other-token").click()
            expect(page.locator("#token-reason")).to_have_text(f"Type a token that may do this; {message}.")
            page.locator("#token").fill(admin)
            page.locator("#token-form button").click()
            expect(page.locator("#token-box")).to_be_hidden()
            expect(note).to_be_hidden()
            page.locator("#replay").click()
            expect(note).to_have_text("Replayed 1 step.")
            expect(page.locator("#stage")).to_have_attribute(
                "data-stage", "COMPLETED", timeout=SHOWN_WITHIN_MS
            )


def test_a_stream_refused_with_403_keeps_the_table_and_is_not_retried(plane: Plane) -> None:
    """The live stream answered 503 is retried; answered 403 then, the page shows the API's
    message, keeps the project's steps, asks for no token and opens the stream no more."""
    project_id = unique_project("forbidden")
    payload = ProvisionProjectPayload.model_validate({"project_id": project_id, "region": REGION})
    plane.app.repository.register_request(payload, uuid.uuid4())
    message = "this token lacks the 'read' scope"
    answers = iter([(503, "store_unavailable", "the database is not answering")])

    def refuse(route: Route) -> None:
        status, code, text_ = next(answers, (403, "forbidden", message))
        route.fulfill(
            status=status,
            content_type="application/json",
            body=json.dumps({"error": {"code": code, "message": text_}}),
        )

    with serving(create_api(plane.app, tokens=None, insecure_local=True)) as base_url, chromium() as browser:
        page = browser.new_page(viewport=VIEWPORT)
        opened = _requests_to(page, "/events")
        page.route(re.compile(r".*/v1/projects/[^/]+/events$"), refuse)
        page.goto(f"{base_url}/?project={project_id}")
        expect(page.locator("#message")).to_have_text(
            f"The live stream was refused: {message}. Use another token"
        )
        expect(page.locator("#conn")).to_have_text("not connected")
        expect(page.locator("#chain-provisioning tr[data-step]")).to_have_count(len(STEP_NAMES))
        expect(page.locator("#stage")).to_have_attribute("data-stage", "INITIALIZING")
        page.wait_for_timeout(3000)  # past the first backoffs: a retry would have opened it again
        assert len(opened) == 2, opened
        expect(page.locator("#token-box")).to_be_hidden()
        expect(page.locator("#conn")).to_have_text("not connected")


def test_a_token_that_may_not_read_is_told_so_on_the_landing_view(app: App) -> None:
    """A token with only ``replay`` on the landing view: the API's 403 message is shown, no token
    is asked for, and the list is not read again and again."""
    token, entry = new_token("page-replayer", ["replay"])
    api = create_api(app, tokens=TokenSet.parse([entry], source="test"), insecure_local=False)
    with serving(api) as base_url, chromium() as browser:
        page = browser.new_page(viewport=VIEWPORT)
        _with_token(page, token)
        listed = _requests_to(page, "/v1/projects")
        page.goto(f"{base_url}/")
        expect(page.locator("#message")).to_have_text(
            "This token cannot list projects: this token lacks the 'read' scope. Use another token"
        )
        expect(page.locator("#token-box")).to_be_hidden()
        page.wait_for_timeout(6000)  # past the landing view's next read, were it to read again
        assert len(listed) == 1, listed
        expect(page.locator("#landing-status")).to_have_text("")
        _screenshot(page, "page-landing-forbidden.png")
