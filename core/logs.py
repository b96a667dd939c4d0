"""Logging set-up shared by the service's processes."""

from __future__ import annotations

import logging
import os

LOG_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"


def configure_logging() -> None:
    """Send INFO and above to stderr unless logging is already configured.

    ``LOG_LEVEL`` overrides the level. Request text is only ever logged at
    DEBUG, so INFO logs carry ids, counts and timings but no user text.
    """
    root = logging.getLogger()
    if root.handlers:
        return
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format=LOG_FORMAT)
