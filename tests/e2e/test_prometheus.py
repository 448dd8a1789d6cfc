"""A real Prometheus (Debian's) scrapes obi while an instrumented server takes traffic."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.e2e.agent import AgentProcess
from tests.e2e.reliability import get_all, python_app
from tests.e2e.test_cli import obi
from tests.support import free_port, start_process, stop_process
from tests.unit.test_prometheus import promtool_check


@contextmanager
def prometheus_server(root: Path, target_port: int, path: str = "/metrics") -> Iterator[str]:
    """Prometheus on loopback scraping 127.0.0.1:target_port every second; yields its API URL."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: `make deps` installs Debian's package"
    config = root / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: obi\n    honor_labels: true\n"
        f"    metrics_path: {path}\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n")
    port = free_port()
    proc = start_process([binary, f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
                          f"--web.listen-address=127.0.0.1:{port}"], port=port, timeout=30)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


def query(api: str, promql: str) -> list[dict[str, object]]:
    url = f"{api}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=5) as response:
        answer = json.loads(response.read())
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def wait_for_value(api: str, promql: str, wanted: float, timeout: float = 30.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    result: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        result = query(api, promql)
        if result and float(result[0]["value"][1]) == wanted:  # type: ignore[index]
            return result
        time.sleep(0.5)
    raise AssertionError(f"{promql} never reached {wanted}: last {result}")


def test_prometheus_scrapes_obi_and_counts_every_request(tmp_path: Path) -> None:
    with python_app("shop-api") as (app, port):
        metrics_port = free_port()
        env = {"OTEL_EBPF_OPEN_PORT": str(port), "OTEL_EBPF_PROMETHEUS_PORT": str(metrics_port),
               "OTEL_EBPF_TRACE_PRINTER": "disabled"}
        with AgentProcess(env) as agent, prometheus_server(tmp_path, metrics_port) as api:
            started = agent.wait_log(lambda e: e.get("event") == "agent_started", 10)
            assert started["prometheus"] == f":{metrics_port}/metrics"
            agent.wait_instrumented(app.pid)
            paths = [f"/factorial/{i}" for i in range(25)] + ["/status/503"] * 5
            assert sorted(get_all(port, paths)) == [200] * 25 + [503] * 5
            count = 'http_server_request_duration_seconds_count{service_name="shop-api"'
            wait_for_value(api, f'sum({count},http_response_status_code="200"}})', 25)
            assert wait_for_value(api, f'sum({count},http_response_status_code="503"}})', 5)
            [series] = query(api, f'{count},http_response_status_code="200"}}')
            labels = series["metric"]
            assert isinstance(labels, dict)
            assert labels == {
                "__name__": "http_server_request_duration_seconds_count", "service_name": "shop-api",
                "job": "shop-api", "instance": labels["instance"], "http_request_method": "GET",
                "http_response_status_code": "200", "http_route": "/factorial/*", "url_scheme": "http",
                "server_address": "127.0.0.1", "server_port": str(port)}
            assert labels["instance"].endswith(f":{app.pid}")  # obi's service.instance.id: host:pid
            # The scrape went well (up is the scrape job's own series), and target_info joins on
            # job and instance.
            [up] = query(api, 'up{job="obi"}')
            assert float(up["value"][1]) == 1.0  # type: ignore[index]
            [target] = query(api, 'target_info{service_name="shop-api"}')
            target_labels = target["metric"]
            assert isinstance(target_labels, dict)
            assert target_labels["telemetry_sdk_language"] == "python"
            assert (target_labels["job"], target_labels["instance"]) == (labels["job"], labels["instance"])
            # obi's output as it is: promtool finds nothing to say.
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
                assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
                assert promtool_check(response.read()) == ""
            assert agent.stop() == 0


def test_a_port_already_taken_is_a_clear_error_at_start() -> None:
    with python_app("port-clash") as (_, port):
        done = obi(env={"OTEL_EBPF_OPEN_PORT": str(port), "OTEL_EBPF_PROMETHEUS_PORT": str(port)})
    last = done.stderr.splitlines()[-1]
    assert done.returncode == 1 and last.startswith(f"obi: [Errno 98] cannot listen on port {port} for "
                                                    "Prometheus scrapes"), done.stderr
    assert "Address already in use" in last


def fetch(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        assert response.status == 200
        return bytes(response.read())


def sample(exposition: bytes, prefix: str, having: str = "") -> int:
    """The value of the one sample line starting with `prefix` (and holding `having`)."""
    [line] = [line for line in exposition.decode().splitlines() if line.startswith(prefix) and having in line]
    return int(line.rsplit(" ", 1)[1])


@pytest.mark.parametrize("layout", ["one port", "two ports", "one path"])
def test_obis_own_metrics_beside_the_applications(layout: str) -> None:
    with python_app("own-metrics") as (app, port):
        app_port = free_port()
        internal_port = app_port if layout != "two ports" else free_port()
        internal_path = "/metrics" if layout == "one path" else "/internal/metrics"
        env = {"OTEL_EBPF_OPEN_PORT": str(port), "OTEL_EBPF_PROMETHEUS_PORT": str(app_port),
               "OTEL_EBPF_INTERNAL_METRICS_EXPORTER": "prometheus",
               "OTEL_EBPF_INTERNAL_METRICS_PROMETHEUS_PORT": str(internal_port),
               "OTEL_EBPF_INTERNAL_METRICS_PROMETHEUS_PATH": internal_path,
               "OTEL_EBPF_TRACE_PRINTER": "disabled", "OTEL_EBPF_BPF_METRIC_SCRAPE_INTERVAL": "1s"}
        with AgentProcess(env) as agent:
            agent.wait_instrumented(app.pid)
            assert sorted(get_all(port, ["/hello"] * 3)) == [200] * 3
            deadline = time.monotonic() + 10
            while b'http_server_request_duration_seconds_count{service_name="own-metrics"' not in (
                    application := fetch(app_port, "/metrics")):
                assert time.monotonic() < deadline, application.decode()[-2000:]
                time.sleep(0.2)
            internal = fetch(internal_port, internal_path)
            for text in (application, internal):
                assert promtool_check(text) == ""
            lines = internal.decode().splitlines()
            exe = Path(os.readlink(f"/proc/{app.pid}/exe")).name
            assert f'obi_instrumented_processes{{process_name="{exe}"}} 1' in lines
            requests = [line for line in lines if line.startswith("obi_prometheus_http_requests_total{")]
            assert f'obi_prometheus_http_requests_total{{port="{app_port}",path="/metrics"}}' in \
                " ".join(requests)
            # The spans' counter, and the maps, counted every second here: the traced app comes
            # into the pid filter.
            deadline = time.monotonic() + 10
            while True:
                built = sample(internal, "obi_spans_built_total ")
                in_filter = sample(internal, "obi_bpf_map_entries_total{", 'map_name="pid_filter"')
                if built >= 3 and in_filter >= 1:
                    break
                assert time.monotonic() < deadline, f"spans built {built}, pid_filter entries {in_filter}"
                time.sleep(0.3)
                internal = fetch(internal_port, internal_path)
            if layout == "one path":  # one exposition with both: each family once
                assert application.count(b"# TYPE obi_ebpf_events_total counter") == 1
                assert b"# TYPE http_server_request_duration_seconds histogram" in internal
            else:
                assert b"obi_ebpf_events_total" not in application
            assert agent.stop() == 0
