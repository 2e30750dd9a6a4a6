"""`provision api`: the HTTP front door (needs the api extra: FastAPI and uvicorn)."""

from __future__ import annotations

from typing import Annotated

import typer

from services.cli.common import LocalFlag, errors, read_settings
from services.web.server import serve


def api(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8080,
    insecure_local: Annotated[
        bool,
        typer.Option(
            "--insecure-local",
            help="Serve without tokens (only on a loopback address): for a machine of one's own.",
        ),
    ] = False,
    local: LocalFlag = False,
) -> None:
    """Serve the HTTP API, its live stream and its page until SIGTERM/SIGINT.

    Callers present `Authorization: Bearer <token>`; the tokens' hashes come from
    PROVISION_API_TOKENS or PROVISION_API_TOKENS_FILE (entries from `provision api-token`).
    Without one it refuses to start unless --insecure-local."""

    with errors():
        serve(read_settings(local=local), host=host, port=port, insecure_local=insecure_local)
