"""A worker process of `threadline serve --workers N`: uvicorn's supervisor starts each by calling
`create_worker_app` in a fresh interpreter; the supervisor has done the one-time work (migrations, the first
admin) already. A worker is a replica on this machine: its own instance lease, sandboxes, warm-pool turn and
share of the rate limits; everything else it shares with the others through the database."""

from __future__ import annotations

import ctypes
import signal
import sys

from fastapi import FastAPI

from threadline.api.app import create_app
from threadline.api.server import end_streams_first_in_this_process
from threadline.config import Settings
from threadline.observability.logging import configure_logging

_PR_SET_PDEATHSIG = 1


def _stop_with_parent() -> None:
    """Linux: SIGTERM this worker when its supervisor dies, even by SIGKILL, so no worker (and none of its
    sandboxes) outlives `threadline serve`. The worker then shuts down as on any SIGTERM."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return


def create_worker_app() -> FastAPI:
    _stop_with_parent()
    settings = Settings()
    # A spawned interpreter: the supervisor's logging set-up is not inherited.
    configure_logging(settings.log_format, settings.log_level)
    app = create_app(settings, migrate=False)
    end_streams_first_in_this_process(app)
    return app
