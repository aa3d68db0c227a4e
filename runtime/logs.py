"""The one log format of every daemon: `2025-01-31 12:00:00,123 strata.kvstore INFO listening on ...`.

Records go to stderr; the logger name says which daemon (strata.scheduler, strata.executor,
strata.kvstore) or module wrote the line."""
from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format=LOG_FORMAT)
