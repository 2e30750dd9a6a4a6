"""``engine`` commands: start, stop and look at a private Docker engine, and build the project's
images on it (``provision.commands`` mounts :data:`engine_app`). Progress goes to stderr."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tooling.engine.base import base_image_tag, ensure_base_image
from tooling.engine.daemon import PrivateDaemon, docker_cli, existing_engine, locate_engine
from tooling.engine.images import build_project_images
from tooling.output import errors, settings

engine_app = typer.Typer(
    rich_markup_mode=None,
    help="A Docker engine of our own (root; no bridge, host network) and the project's images on it.",
    no_args_is_help=True,
)


def _progress(line: str) -> None:
    typer.echo(line, err=True)


def _directory() -> Path:
    return settings().state_dir / "engine"


@engine_app.command()
def up() -> None:
    """Start a private dockerd under the state directory unless an engine answers (needs root)."""
    with errors():
        engine, _ = locate_engine(_directory(), _progress)
        typer.echo(f"DOCKER_HOST={engine.host}")


@engine_app.command()
def down() -> None:
    """Stop the private dockerd (and with it its containers); nothing if it is not running."""
    with errors():
        PrivateDaemon(_directory()).down(_progress)


@engine_app.command()
def status() -> None:
    """Say which engine answers, and whether the base image is built on it; exit 1 if none."""
    with errors():
        cli = docker_cli()
        engine = existing_engine(cli)
        if engine is None:
            daemon = PrivateDaemon(_directory())
            private = daemon.engine(cli)
            engine = private if daemon.pid() is not None and private.answers() else None
        if engine is None:
            typer.echo("no Docker engine answers (start one with `provision engine up`)", err=True)
            raise typer.Exit(1)
        built = engine.run("image", "inspect", base_image_tag(), check=False).returncode == 0
        typer.echo(
            f"engine {engine.server_version()} on {engine.host}{' (private)' if engine.private else ''}"
        )
        typer.echo(f"base image {base_image_tag()}: {'built' if built else 'not built'}")


@engine_app.command()
def build(
    context: Annotated[
        Path, typer.Option(help="The checkout to build (holds services/Dockerfile).")
    ] = Path(),
    official_base: Annotated[
        bool,
        typer.Option("--official-base", help="Build on the Dockerfile's default base (needs a registry)."),
    ] = False,
) -> None:
    """Build the workers' and the API's images (on a base made with debootstrap, unless --official-base)."""
    with errors():
        directory = _directory()
        engine, _ = locate_engine(directory, _progress)
        base = None if official_base else ensure_base_image(engine, directory / "base", _progress)
        worker, api = build_project_images(engine, context.resolve(), base_image=base, progress=_progress)
        for image in (worker, api):
            typer.echo(f"{image.tag}\t{image.size / 1e6:.0f} MB\t{image.seconds:.0f} s")
