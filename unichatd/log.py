"""Structured logs: JSON lines on stderr by default, or a console format for people."""

from __future__ import annotations

import logging
import sys

import structlog

from .config import LogConfig


class _Switches:
    """Read on hot paths instead of calling a filtered-out logger (which still costs a
    lazy proxy lookup per call, as loggers stay uncached so that SIGHUP can relevel them)."""

    debug = False


switches = _Switches()

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def configure_logging(config: LogConfig) -> None:
    switches.debug = config.level == "debug"
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
    # basicConfig adds the handler once (later calls change nothing), so the level is
    # set on the root logger itself: a reload must change it too.
    stdlib_level = max(_LEVELS[config.level], logging.WARNING)
    logging.basicConfig(level=stdlib_level, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    logging.getLogger().setLevel(stdlib_level)
