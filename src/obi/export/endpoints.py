"""Where OTLP data goes: endpoint, protocol and TLS from the OTel exporter settings.

Follows the OTel exporter specification as OBI applies it: a signal-specific
endpoint is used as given, except that an empty path gets ``/v1/<signal>``
(OBI's Go SDK does so); the common endpoint gets ``/v1/<signal>`` appended for
HTTP; an unset protocol is guessed from the port (4317 gRPC, 4318 HTTP) and
otherwise defaults to ``http/protobuf``. The config loader validates with these
same functions, so a loaded configuration always resolves.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from typing import Literal

OtlpProtocol = Literal["grpc", "http/protobuf"]
OtlpSignal = Literal["traces", "metrics"]

PROTOCOL_GRPC: OtlpProtocol = "grpc"
PROTOCOL_HTTP_PROTOBUF: OtlpProtocol = "http/protobuf"
DEFAULT_PROTOCOL: OtlpProtocol = PROTOCOL_HTTP_PROTOBUF
# A protocol of the OTel specification that obi does not export yet.
PROTOCOL_HTTP_JSON = "http/json"
USUAL_PORT_GRPC = "4317"
USUAL_PORT_HTTP = "4318"


class OtlpEndpointError(ValueError):
    """An OTLP endpoint or protocol setting that cannot be used."""


@dataclass(frozen=True, slots=True, repr=False)
class OtlpTarget:
    """One resolved OTLP destination for one signal.

    ``endpoint`` is the full URL for HTTP and ``host:port`` for gRPC.
    """

    protocol: OtlpProtocol
    endpoint: str
    tls: bool
    signal: OtlpSignal

    @property
    def is_grpc(self) -> bool:
        return self.protocol == PROTOCOL_GRPC

    def __str__(self) -> str:
        """Safe to log: the URL's user info (a credential) is left out."""
        return f"{self.protocol} {redact_url(self.endpoint)}"

    __repr__ = __str__


def guess_protocol(endpoint_url: urllib.parse.SplitResult) -> OtlpProtocol:
    """The protocol OBI assumes when none is configured: by port, else http/protobuf."""
    port = _port_text(endpoint_url)
    if port.endswith(USUAL_PORT_GRPC):
        return PROTOCOL_GRPC
    if port.endswith(USUAL_PORT_HTTP):
        return PROTOCOL_HTTP_PROTOBUF
    return DEFAULT_PROTOCOL


def resolve_otlp_target(
    common_endpoint: str,
    signal_endpoint: str,
    protocol: str,
    signal: OtlpSignal,
) -> OtlpTarget | None:
    """Resolve one signal's destination; None when no endpoint is configured.

    Raises OtlpEndpointError for a URL that check_otlp_endpoint refuses or a
    protocol that parse_otlp_protocol refuses.
    """
    is_common = not signal_endpoint.strip()
    raw = (common_endpoint if is_common else signal_endpoint).strip()
    if not raw:
        return None
    url = check_otlp_endpoint(raw)
    chosen = parse_otlp_protocol(protocol) if protocol.strip() else guess_protocol(url)
    tls = url.scheme == "https"
    if chosen == PROTOCOL_GRPC:
        host_port = url.netloc.rpartition("@")[2]
        return OtlpTarget(protocol=chosen, endpoint=host_port, tls=tls, signal=signal)
    signal_path = f"/v1/{signal}"
    if is_common:
        path = url.path.rstrip("/") + signal_path
    elif url.path in ("", "/"):
        path = signal_path
    else:
        path = url.path
    full = urllib.parse.urlunsplit((url.scheme, url.netloc, path, url.query, ""))
    return OtlpTarget(protocol=chosen, endpoint=full, tls=tls, signal=signal)


def check_otlp_endpoint(endpoint: str) -> urllib.parse.SplitResult:
    """Split an OTLP endpoint URL, refusing it unless it is http(s) with a host and a valid port."""
    try:
        url = urllib.parse.urlsplit(endpoint)
    except ValueError:  # unbalanced IPv6 brackets
        raise OtlpEndpointError(f"bad URL {_shown(endpoint)}: invalid host") from None
    try:
        port = url.port
    except ValueError:
        raise OtlpEndpointError(f"bad URL {_shown(endpoint)}: invalid port") from None
    if url.scheme not in ("http", "https"):
        raise OtlpEndpointError(f"bad URL {_shown(endpoint)}: scheme must be http or https")
    if not url.hostname:
        raise OtlpEndpointError(f"bad URL {_shown(endpoint)}: missing host")
    if port == 0:
        raise OtlpEndpointError(f"bad URL {_shown(endpoint)}: invalid port")
    return url


def parse_otlp_protocol(protocol: str) -> OtlpProtocol:
    """Parse an OTEL_EXPORTER_OTLP_PROTOCOL value, case-insensitively."""
    value = protocol.strip().lower()
    if value == PROTOCOL_GRPC:
        return PROTOCOL_GRPC
    if value == PROTOCOL_HTTP_PROTOBUF:
        return PROTOCOL_HTTP_PROTOBUF
    if value == PROTOCOL_HTTP_JSON:
        raise OtlpEndpointError(
            f"protocol {_shown(protocol)} is not supported by obi yet (use grpc or http/protobuf)"
        )
    raise OtlpEndpointError(f"unknown protocol {_shown(protocol)} (accepted: grpc, http/protobuf)")


def redact_url(url: str) -> str:
    """The URL without user info, safe to log."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _shown(text: str) -> str:
    """A value quoted on one line for an error message, without URL user info (may be a secret)."""
    scheme, sep, rest = text.partition("://")
    netloc_end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    if sep and "@" in rest[:netloc_end]:
        text = scheme + sep + rest[:netloc_end].rpartition("@")[2] + rest[netloc_end:]
    return json.dumps(text, ensure_ascii=False)


def _port_text(url: urllib.parse.SplitResult) -> str:
    # netloc may carry userinfo or IPv6 brackets; the port is after the last ':' past ']'.
    host_port = url.netloc.rpartition("@")[2]
    if host_port.endswith("]"):
        return ""
    _, sep, port = host_port.rpartition(":")
    return port if sep else ""
