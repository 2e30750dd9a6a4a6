"""What holds nothing of a tenant's and takes no token: the page, liveness and metrics (the
OpenAPI document is FastAPI's own, completed in ``app``)."""

from __future__ import annotations

from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.responses import HTMLResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..deps import WebState, web_state
from ..views import Health

router = APIRouter()

State = Annotated[WebState, Depends(web_state)]


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def page() -> HTMLResponse:
    """The page that watches the projects."""
    return HTMLResponse(_PAGE, headers=_PAGE_HEADERS)


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}}, summary="Liveness")
def healthz(response: Response, state: State) -> Health:
    """200 while the database answers and the live-stream listener is connected."""
    database = state.usecases.database_answers()
    ok = database and state.listener.connected
    response.status_code = 200 if ok else 503
    return Health(status="ok" if ok else "unavailable", database=database, listener=state.listener.connected)


@router.get("/metrics", include_in_schema=False)
def metrics_text(state: State) -> Response:
    """The process's metrics, in Prometheus's text format."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _page() -> str:
    try:
        return resources.files("services.web").joinpath("page.html").read_text(encoding="utf-8")
    except FileNotFoundError:
        return "<!doctype html><title>Tenant provisioning</title><p>The page is not installed."


_PAGE = _page()
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
