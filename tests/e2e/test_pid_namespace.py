"""The sidecar shape: obi and the application share a pid namespace of their own
(Kubernetes shareProcessNamespace), so obi sees the application as pid 2, not
as its host pid. The kernel side must filter and report in obi's namespace."""

from __future__ import annotations

import sys

from tests.e2e.agent import AgentProcess
from tests.e2e.test_python_app import FAST_EXPORT, SERVERS, attributes, curl
from tests.otlp_receiver import OtlpReceiver
from tests.support import free_port


def test_agent_and_app_in_their_own_pid_namespace() -> None:
    port = free_port()
    with OtlpReceiver() as receiver:
        # bash is pid 1 of the new namespace (the pod's pause process), the app pid 2, obi pid 3.
        script = f"{sys.executable} {SERVERS / 'app.py'} {port} >/dev/null & {sys.executable} -m obi.cli"
        agent = AgentProcess(
            {"OTEL_EBPF_OPEN_PORT": str(port), "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_endpoint,
             **FAST_EXPORT},
            command=["unshare", "--pid", "--fork", "--mount-proc", "bash", "-c", script])
        with agent:
            instrumented = agent.wait_log(lambda e: e.get("event") == "process_instrumented", 10)
            assert instrumented["pid"] == 2
            assert curl(f"http://127.0.0.1:{port}/factorial/4") == "24\n"
            receiver.wait_for_spans(1, timeout=15)
            assert agent.stop() == 0
            stopped = agent.wait_log(lambda e: e.get("event") == "agent_stopped", 1)
    (resource, span), = receiver.spans()
    assert resource["process.pid"] == 2
    assert attributes(span)["url.path"] == "/factorial/4"
    assert stopped["unknown_process"] == 0 and stopped["events_lost"] == 0
