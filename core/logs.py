"""Logging set-up shared by the service's processes."""

from __future__ import annotations

import logging

from core.config import get_settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"


def configure_logging() -> None:
    """Send log records at ``LOG_LEVEL`` to stderr unless logging is set up.

    ``DEBUG=true`` lowers the default level to DEBUG; it never turns on a
    debugger or tracebacks in responses. Request text is only ever logged at
    DEBUG, so INFO logs carry ids, counts and timings but no user text.
    """
    root = logging.getLogger()
    if root.handlers:
        return
    logging.basicConfig(level=get_settings().log_level, format=LOG_FORMAT)
