"""An OTLP receiver for tests: gRPC and HTTP/protobuf on free loopback ports.

Runs in background threads so that synchronous tests can use it:

    with OtlpReceiver() as receiver:
        ...  # point obi at receiver.grpc_endpoint or receiver.http_endpoint
        spans = receiver.wait_for_spans(3, timeout=5)

It keeps every request with its headers (HTTP) or metadata (gRPC) and can be
told to fail the next N requests or to delay its answers.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Literal

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import HistogramDataPoint, Metric, NumberDataPoint
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from obi.export.retry import GRPC_STATUS_DETAILS_KEY
from tests.rpc_status import encode_retry_info_status
from tests.support import TIME_SCALE

Transport = Literal["grpc", "http"]
Signal = Literal["traces", "metrics"]
AttributeValue = str | int | float | bool | bytes | None


def any_value(value: AnyValue) -> AttributeValue:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    result: AttributeValue = getattr(value, kind)
    return result


def attributes_dict(attributes: Iterable[KeyValue]) -> dict[str, AttributeValue]:
    """KeyValue list -> plain dict (arrays and maps are not used by obi)."""
    return {kv.key: any_value(kv.value) for kv in attributes}


@dataclass(frozen=True)
class ReceivedRequest:
    """One Export request as it arrived; header names are lower case."""

    transport: Transport
    signal: Signal
    headers: dict[str, str]
    traces: trace_service_pb2.ExportTraceServiceRequest | None = None
    metrics: metrics_service_pb2.ExportMetricsServiceRequest | None = None


@dataclass
class FailurePlan:
    """Fail the next ``count`` requests with these statuses."""

    count: int = 0
    http_status: int = 503
    grpc_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    retry_after_s: float | None = None
    failed: int = field(default=0)


class OtlpReceiver:
    """gRPC TraceService + MetricsService and HTTP /v1/traces, /v1/metrics on 127.0.0.1."""

    def __init__(
        self, grpc_port: int = 0, http_port: int = 0, *, tls: tuple[Path, Path] | None = None
    ) -> None:
        """Ports 0 pick free ones; give 4317/4318 to test the well-known-port rules.

        ``tls`` (certificate, key): both servers speak TLS only, and the endpoints are https.
        """
        self._want_grpc_port = grpc_port
        self._want_http_port = http_port
        self._tls = tls
        self._lock = threading.Condition()
        self._requests: list[ReceivedRequest] = []
        self._failure = FailurePlan()
        self._delay_s = 0.0
        self._grpc_server: grpc.Server | None = None
        self._http_server: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self.grpc_port = 0
        self.http_port = 0

    # --- lifecycle

    def start(self) -> OtlpReceiver:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _TraceServicer(self), server
        )
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _MetricsServicer(self), server
        )
        address = f"127.0.0.1:{self._want_grpc_port}"
        if self._tls is None:
            self.grpc_port = server.add_insecure_port(address)
        else:
            cert, key = (path.read_bytes() for path in self._tls)
            self.grpc_port = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
        server.start()
        self._grpc_server = server

        http_server = ThreadingHTTPServer(("127.0.0.1", self._want_http_port), _make_http_handler(self))
        http_server.daemon_threads = True
        if self._tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self._tls)
            # A refused handshake (the client does not trust us) only fails that connection.
            http_server.socket = context.wrap_socket(http_server.socket, server_side=True)
        self.http_port = http_server.server_address[1]
        self._http_server = http_server
        self._http_thread = threading.Thread(
            target=http_server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._http_thread.start()
        return self

    def stop(self) -> None:
        if self._grpc_server is not None:
            self._grpc_server.stop(grace=0).wait(2)
            self._grpc_server = None
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_server = None
        if self._http_thread is not None:
            self._http_thread.join(2)
            self._http_thread = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def _scheme(self) -> str:
        return "http" if self._tls is None else "https"

    @property
    def grpc_endpoint(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self.http_port}"

    # --- behaviour knobs

    def fail_next(
        self,
        count: int,
        http_status: int = 503,
        grpc_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        retry_after_s: float | None = None,
    ) -> None:
        """Answer the next ``count`` requests with an error (Retry-After / RetryInfo if given)."""
        with self._lock:
            self._failure = FailurePlan(count, http_status, grpc_code, retry_after_s)

    def set_delay(self, seconds: float) -> None:
        with self._lock:
            self._delay_s = seconds

    @property
    def failed_count(self) -> int:
        with self._lock:
            return self._failure.failed

    def wait_for_failures(self, count: int, timeout: float = 10.0) -> None:
        """Block until at least ``count`` requests were answered with an injected failure."""
        self.wait_for(lambda: self._failure.failed >= count, timeout)

    # --- what arrived

    @property
    def requests(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def trace_requests(self) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.signal == "traces"]

    @property
    def metric_requests(self) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.signal == "metrics"]

    def spans(self) -> list[tuple[dict[str, AttributeValue], Span]]:
        """Every received span with its resource attributes, in arrival order."""
        out: list[tuple[dict[str, AttributeValue], Span]] = []
        for req in self.trace_requests:
            assert req.traces is not None
            for rs in req.traces.resource_spans:
                resource = attributes_dict(rs.resource.attributes)
                for ss in rs.scope_spans:
                    out.extend((resource, span) for span in ss.spans)
        return out

    def metrics(self, name: str) -> list[tuple[dict[str, AttributeValue], Metric]]:
        out: list[tuple[dict[str, AttributeValue], Metric]] = []
        for req in self.metric_requests:
            assert req.metrics is not None
            for rm in req.metrics.resource_metrics:
                resource = attributes_dict(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    out.extend((resource, m) for m in sm.metrics if m.name == name)
        return out

    def metric_points(
        self, name: str
    ) -> list[tuple[dict[str, AttributeValue], HistogramDataPoint | NumberDataPoint]]:
        """Every data point of the named metric, with resource attributes, in arrival order."""
        out: list[tuple[dict[str, AttributeValue], HistogramDataPoint | NumberDataPoint]] = []
        for resource, metric in self.metrics(name):
            kind = metric.WhichOneof("data")
            if kind == "histogram":
                out.extend((resource, p) for p in metric.histogram.data_points)
            elif kind == "sum":
                out.extend((resource, p) for p in metric.sum.data_points)
            elif kind == "gauge":
                out.extend((resource, p) for p in metric.gauge.data_points)
        return out

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout * TIME_SCALE
        with self._lock:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("OTLP receiver: condition not met in time")
                self._lock.wait(remaining)

    def wait_for_spans(
        self, count: int, timeout: float = 10.0
    ) -> list[tuple[dict[str, AttributeValue], Span]]:
        """Block until at least ``count`` spans arrived; TimeoutError otherwise."""
        self.wait_for(lambda: self._span_count_locked() >= count, timeout)
        return self.spans()

    def wait_for_metric(self, name: str, timeout: float = 10.0) -> None:
        self.wait_for(lambda: self._has_metric_locked(name), timeout)

    # --- internals (called from server threads)

    def _span_count_locked(self) -> int:
        total = 0
        for req in self._requests:
            if req.traces is not None:
                for rs in req.traces.resource_spans:
                    for ss in rs.scope_spans:
                        total += len(ss.spans)
        return total

    def _has_metric_locked(self, name: str) -> bool:
        for req in self._requests:
            if req.metrics is not None:
                for rm in req.metrics.resource_metrics:
                    for sm in rm.scope_metrics:
                        if any(m.name == name for m in sm.metrics):
                            return True
        return False

    def _admit(self) -> FailurePlan | None:
        """Apply the delay; return the failure to answer with, if any."""
        with self._lock:
            delay = self._delay_s
        if delay:
            time.sleep(delay)
        with self._lock:
            plan = self._failure
            if plan.count > 0:
                plan.count -= 1
                plan.failed += 1
                self._lock.notify_all()
                return FailurePlan(1, plan.http_status, plan.grpc_code, plan.retry_after_s)
            return None

    def _record(self, request: ReceivedRequest) -> None:
        with self._lock:
            self._requests.append(request)
            self._lock.notify_all()


def _grpc_headers(context: grpc.ServicerContext) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in context.invocation_metadata():
        headers[key.lower()] = value if isinstance(value, str) else value.decode(errors="replace")
    return headers


def _grpc_fail(context: grpc.ServicerContext, plan: FailurePlan) -> None:
    if plan.retry_after_s is not None:
        details = encode_retry_info_status(plan.grpc_code.value[0], "try later", plan.retry_after_s)
        context.set_trailing_metadata(((GRPC_STATUS_DETAILS_KEY, details),))
    context.abort(plan.grpc_code, "test receiver failure")


class _TraceServicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        plan = self._receiver._admit()
        if plan is not None:
            _grpc_fail(context, plan)
        self._receiver._record(ReceivedRequest("grpc", "traces", _grpc_headers(context), traces=request))
        return trace_service_pb2.ExportTraceServiceResponse()


class _MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(
        self,
        request: metrics_service_pb2.ExportMetricsServiceRequest,
        context: grpc.ServicerContext,
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        plan = self._receiver._admit()
        if plan is not None:
            _grpc_fail(context, plan)
        self._receiver._record(ReceivedRequest("grpc", "metrics", _grpc_headers(context), metrics=request))
        return metrics_service_pb2.ExportMetricsServiceResponse()


def _make_http_handler(receiver: OtlpReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _answer(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            if self.path not in ("/v1/traces", "/v1/metrics"):
                self._answer(404, b"")
                return
            plan = receiver._admit()
            if plan is not None:
                extra = {}
                if plan.retry_after_s is not None:
                    extra["Retry-After"] = str(int(plan.retry_after_s))
                self._answer(plan.http_status, b"", extra)
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            if self.path == "/v1/traces":
                traces = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                receiver._record(ReceivedRequest("http", "traces", headers, traces=traces))
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            else:
                metrics = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
                receiver._record(ReceivedRequest("http", "metrics", headers, metrics=metrics))
                answer = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
            self._answer(200, answer)

    return Handler
