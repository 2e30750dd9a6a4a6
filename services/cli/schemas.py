"""`provision schemas`: the events' JSON Schemas and the HTTP API's OpenAPI document, written
into schemas/ or checked current (needs the api extra, for the OpenAPI document)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli.common import Failure, errors, out
from services.schemas import stale_schemas, write_schemas

REPO_SCHEMAS = Path("schemas")


def schemas(
    check: Annotated[
        bool, typer.Option("--check", help="Fail (exit 1) if schemas/ is stale; write nothing.")
    ] = False,
    directory: Annotated[Path, typer.Option(help="Where the schemas live.")] = REPO_SCHEMAS,
) -> None:
    """Generate the JSON Schemas of every event into schemas/."""

    with errors():
        if check:
            stale = stale_schemas(directory)
            if stale:
                raise Failure(f"schemas are stale: {', '.join(stale)}; run `provision schemas`")
            out.print(f"{directory}/ is current")
            return
        changed = write_schemas(directory)
    out.print(
        f"wrote {len(changed)} schema file(s) to {directory}/" if changed else f"{directory}/ is current"
    )
