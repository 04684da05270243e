"""Structured logs: JSON lines on stderr by default, or a console format for people."""

from __future__ import annotations

import logging
import sys

import structlog

from .config import LogConfig

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def configure_logging(config: LogConfig) -> None:
    renderer: structlog.typing.Processor
    if config.format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[config.level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # websockets logs handshake failures through stdlib logging; keep them, quietly.
    logging.basicConfig(level=max(_LEVELS[config.level], logging.WARNING), stream=sys.stderr,
                        format="%(levelname)s %(name)s %(message)s")
