"""Discovery follows the kernel: a process that starts listening after obi started is
instrumented right after its listen(), with either kind of syscall hook, although /proc
is then only polled for new pids and read whole once a minute."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import pytest

from tests.e2e.agent import AgentProcess
from tests.otlp_receiver import OtlpReceiver
from tests.support import free_port, kernel_hook_sets, stop_process

# Binds, waits for a line on stdin, listens, serves HTTP.
LATE_LISTENER = r"""
import http.server, sys
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), http.server.SimpleHTTPRequestHandler,
                                bind_and_activate=False)
server.server_bind()
print("bound", flush=True)
sys.stdin.readline()
server.server_activate()
print("listening", flush=True)
server.serve_forever()
"""
# Longer than the watcher's poll of new pids (5 s): the listener is an old pid by then.
SEEN_BY_A_POLL_S = 6.0


@pytest.mark.parametrize("hooks", kernel_hook_sets())
def test_a_process_that_listens_after_obi_started_is_instrumented_at_once(hooks: str) -> None:
    port = free_port()
    with OtlpReceiver() as receiver:
        env = {"OTEL_EBPF_OPEN_PORT": str(port), "OTEL_EBPF_BPF_SYSCALL_HOOKS": hooks,
               "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.grpc_endpoint,
               "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc", "OTEL_EBPF_OTLP_TRACES_BATCH_TIMEOUT": "200ms"}
        with AgentProcess(env) as agent:
            app = subprocess.Popen([sys.executable, "-c", LATE_LISTENER, str(port)], text=True,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   env={"PATH": "/usr/bin:/bin", "OTEL_SERVICE_NAME": "late-listener"})
            try:
                assert app.stdin is not None and app.stdout is not None
                assert app.stdout.readline().strip() == "bound"
                time.sleep(SEEN_BY_A_POLL_S)
                assert not [e for e in agent.logs if e.get("event") == "process_instrumented"]
                app.stdin.write("go\n")
                app.stdin.flush()
                assert app.stdout.readline().strip() == "listening"
                listened = time.monotonic()
                agent.wait_instrumented(app.pid, timeout=30)
                took = time.monotonic() - listened
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
                    assert response.status == 200
                receiver.wait_for_spans(1)
            finally:
                stop_process(app)
        print(f"\n{hooks}: instrumented {took:.3f}s after listen()")
        assert took < 1.0
        [(resource, span)] = receiver.spans()
        assert resource["service.name"] == "late-listener" and resource["process.pid"] == app.pid
        assert span.name == "GET /"
