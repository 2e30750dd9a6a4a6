"""Rotate a project's credentials and die by SIGKILL at a named point, as a kill -9 would.

``python -m tests.integration.crash_rotate PROJECT POINT``; the settings come from the
environment, like any entry point's.
"""

from __future__ import annotations

import os
import signal
import sys

from services.bootstrap import build_app
from services.usecases.credentials import rotate_credentials
from shared.settings import Settings


def main(project_id: str, point: str) -> None:
    """Run the rotation with a checkpoint that kills this process at ``point``."""

    def checkpoint(reached: str) -> None:
        if reached == point:
            os.kill(os.getpid(), signal.SIGKILL)

    app = build_app(Settings())
    try:
        rotate_credentials(project_id, app=app, checkpoint=checkpoint)
    finally:
        app.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
