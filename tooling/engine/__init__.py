"""A Docker engine for the project's images and their tests where none runs: a private
``dockerd`` without a bridge (root only), a base image made from Debian's packages where no
registry answers, and the project's images built on it. ``provision engine`` drives it."""

from tooling.engine.base import base_image_tag, ensure_base_image
from tooling.engine.daemon import Engine, PrivateDaemon, docker_cli, locate_engine, remove_containers
from tooling.engine.images import API_IMAGE, WORKER_IMAGE, BuiltImage, build_project_images

__all__ = [
    "API_IMAGE",
    "WORKER_IMAGE",
    "BuiltImage",
    "Engine",
    "PrivateDaemon",
    "base_image_tag",
    "build_project_images",
    "docker_cli",
    "ensure_base_image",
    "locate_engine",
    "remove_containers",
]
