"""Logging setup: structlog to stderr as text or JSON, level-filtered, with secrets redacted.

Standard-library logging (grpc, aiohttp, asyncio) goes through the same
processors, so its records are filtered and redacted the same way.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "<redacted>"

LEVELS: Mapping[str, int] = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
}

# Keys whose values are secrets wherever they appear in an event.
_SECRET_KEY = re.compile(
    r"header|authorization|token|password|passwd|secret|api[_-]?key|cookie|credential",
    re.IGNORECASE,
)
# Credentials written inside free text, e.g. an error message quoting a header.
_SECRET_IN_TEXT = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
# Libraries whose debug records dump the wire (hpack: every header name and value, the OTLP
# headers' tokens with them; h2: every frame). They never log below INFO, whatever obi's level.
WIRE_LOGGERS = ("hpack", "h2")


def _redact(value: object, depth: int = 0) -> object:
    if depth > 8:
        return value
    if isinstance(value, str):
        return _SECRET_IN_TEXT.sub(lambda m: f"{m.group(1)} {REDACTED}", value)
    if isinstance(value, Mapping):
        return {
            key: REDACTED if isinstance(key, str) and _SECRET_KEY.search(key) else _redact(item, depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_redact(item, depth + 1) for item in value]
    if type(value) is tuple:
        return tuple(_redact(item, depth + 1) for item in value)
    return value


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Replace the values of secret-looking keys, at any depth, and bearer tokens in text."""
    for key in list(event_dict):
        if _SECRET_KEY.search(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact(event_dict[key])
    return event_dict


class _ObiHandler(logging.StreamHandler[TextIO]):
    """The standard-library handler obi installs, told apart so reconfiguring replaces it."""


def _level_number(level: str) -> int:
    try:
        return LEVELS[level.strip().upper()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}") from None


def _renderer(fmt: str, stream: TextIO) -> Processor:
    if fmt == "json":
        return structlog.processors.JSONRenderer()
    if fmt == "text":
        return structlog.dev.ConsoleRenderer(colors=stream.isatty())
    raise ValueError(f"unknown log format {fmt!r}")


def configure_logging(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """Send structlog and standard-library logs at ``level`` or above to stderr as ``fmt``.

    ``level`` is DEBUG, INFO, WARN or ERROR (any case); ``fmt`` is "text" or "json".
    """
    out = sys.stderr if stream is None else stream
    threshold = _level_number(level)
    renderer = _renderer(fmt, out)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    if fmt == "json":
        shared.append(structlog.processors.format_exc_info)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        context_class=dict,
        cache_logger_on_first_use=False,
    )
    handler = _ObiHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _ObiHandler):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(threshold)
    for name in WIRE_LOGGERS:
        logging.getLogger(name).setLevel(max(threshold, logging.INFO))
