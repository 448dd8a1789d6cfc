"""Logging setup: level filtering, text and JSON rendering, secrets redacted everywhere."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from obi.logs import REDACTED, configure_logging, redact_secrets

TOKEN = "Z2hwX0l4Y29QOWhr....ScQo="


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_redaction_of_secret_keys_at_any_depth() -> None:
    event = {
        "event": "exporter_configured",
        "headers": {"Authorization": f"Bearer {TOKEN}"},
        "api_key": "k",
        "exporter": {"endpoint": "http://x:4318", "options": [{"password": "p"}, {"token": "t"}]},
        "note": f"sent Authorization: Bearer {TOKEN} upstream",
        "count": 3,
    }
    out = redact_secrets(None, "info", dict(event))
    assert out["headers"] == REDACTED
    assert out["api_key"] == REDACTED
    assert out["exporter"] == {
        "endpoint": "http://x:4318",
        "options": [{"password": REDACTED}, {"token": REDACTED}],
    }
    assert TOKEN not in str(out["note"])
    assert out["count"] == 3
    assert out["event"] == "exporter_configured"


def test_json_output_is_filtered_by_level_and_redacted() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    log = structlog.get_logger().bind(component="test")
    log.debug("hidden_event")
    log.info("shown_event", secret="s3cr3t", detail={"Authorization": f"Bearer {TOKEN}"})
    log.warning("warned_event", retries=2)

    lines = json_lines(stream)
    assert [line["event"] for line in lines] == ["shown_event", "warned_event"]
    assert lines[0]["component"] == "test"
    assert lines[0]["level"] == "info"
    assert lines[0]["secret"] == REDACTED
    assert lines[0]["detail"] == {"Authorization": REDACTED}
    assert "timestamp" in lines[0]
    assert TOKEN not in stream.getvalue() and "s3cr3t" not in stream.getvalue()


@pytest.mark.parametrize(("level", "shown"), [("DEBUG", 4), ("WARN", 2), ("ERROR", 1)])
def test_levels(level: str, shown: int) -> None:
    stream = io.StringIO()
    configure_logging(level, "json", stream=stream)
    log = structlog.get_logger()
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert len(json_lines(stream)) == shown


def test_text_output_has_no_colors_when_not_a_tty() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "text", stream=stream)
    structlog.get_logger().info("agent_started", password="hunter2", pid=7)
    text = stream.getvalue()
    assert "agent_started" in text and "pid=7" in text
    assert "\x1b[" not in text
    assert "hunter2" not in text and REDACTED in text


def test_standard_library_logging_is_routed_and_redacted() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    library = logging.getLogger("some.library")
    library.debug("too detailed")
    library.warning("retrying with Bearer %s", TOKEN)
    lines = json_lines(stream)
    assert len(lines) == 1
    assert lines[0]["logger"] == "some.library"
    assert TOKEN not in stream.getvalue()


def test_reconfiguring_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", "json", stream=first)
    configure_logging("INFO", "json", stream=second)
    logging.getLogger("x").warning("once")
    assert first.getvalue() == ""
    assert len(json_lines(second)) == 1


def test_bad_level_or_format() -> None:
    with pytest.raises(ValueError, match="log level"):
        configure_logging("LOUD", "text")
    with pytest.raises(ValueError, match="log format"):
        configure_logging("INFO", "xml")


def test_wire_dumps_of_protocol_libraries_stay_out_even_at_debug() -> None:
    # hpack logs every header it encodes at DEBUG: the OTLP headers' tokens would follow.
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream=stream)
    logging.getLogger("hpack.hpack").debug("Encoding (b'x-api-key', b'k3y-4b3c2a1')")
    logging.getLogger("h2.connection").debug("frame")
    logging.getLogger("grpclib.client").debug("kept")
    logging.getLogger("h2.connection").warning("kept too")
    assert [line["event"] for line in json_lines(stream)] == ["kept", "kept too"]
