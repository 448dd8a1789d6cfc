"""The kernel tests run again on each kernel of the matrix (tests/matrix/vm.py): Debian's
kernels booted in a virtme-ng guest under QEMU without KVM, sharing this machine's file system
and this repository's .venv.

A kernel that cannot be fetched, or a guest that cannot be booted, fails the test (a skip
would hide the kernel). The guest's pytest runs the explicit paths of GUEST_TESTS, never
tests/matrix (its conftest ignores it in a guest as well)."""

from __future__ import annotations

import shlex

import pytest

from tests.e2e.test_go import GOBLOG
from tests.golang import build_go
from tests.matrix.vm import MATRIX, VmError, boot, fetch

pytestmark = pytest.mark.kernel

# What each guest runs. Under software emulation Python runs several times slower, a process
# start costs seconds and each load of the capture up to a minute, so the guests run what only
# they can show. On 6.1: the probe auto decides by; every hook set it allows (fentry and kprobes
# among them, which this machine's kernel has not) through every hooked call
# (tests/kernel/test_hooks.py); and what a user sees, end to end, with the hooks auto picks there
# (tests.support.TIME_SCALE stretches their waits): the guide's Go HTTPS server, OpenSSL in nginx
# and curl, the context in a TCP option between two obis (sockops, sk_msg), the guide's
# unprivileged capability list, a plain HTTP server. On 5.10, older than obi claims, the one-line
# refusal at start. On Debian unstable's kernel (the newest verifier Debian has; its version moves):
# every hook set and the uprobe programs load (tests/matrix/load_capture.py).
PYTEST = (".venv/bin/pytest", "-p", "no:cacheprovider", "-v", "--timeout=600")
FENTRY_PROBE = (".venv/bin/python -c 'from obi.ebpf.capture import fentry_blocker; "
                "print(\"fentry probe:\", fentry_blocker())'")
HOOK_TESTS = [f"tests/kernel/test_hooks.py::{test}[{hooks}]"
              for test in ("test_server_calls_of_every_kind", "test_client_calls_and_a_connect_in_progress",
                           "test_a_process_not_traced_that_listens_is_noticed")
              for hooks in ("fentry", "kprobe", "tracepoint", "raw_tracepoint")]
USER_TESTS = [
    "tests/e2e/test_cli.py::test_auto_takes_the_first_hook_set_this_kernel_allows_and_says_what_it_passed_over",
    "tests/e2e/test_go.py::test_goblog_https_server_and_client_spans[debian-False-port]",
    "tests/e2e/test_tls.py::test_nginx_https_spans",
    "tests/e2e/test_tls.py::test_curl_client_spans_from_its_first_request",
    "tests/e2e/test_distributed_traces.py::test_tcp_option_carries_a_tls_call_between_two_obis",
    "tests/e2e/test_least_privilege.py::test_unprivileged_list_delivers_the_same_spans_as_privileged",
    "tests/e2e/test_python_app.py::test_sidecar_environment_over_http",
]
# The Go programs USER_TESTS run, built here first: Go builds in the guest would take minutes.
GO_BUILDS = [(GOBLOG, "debian", False, "goblog"), (GOBLOG, "current", True, "goblog")]
GUEST_COMMANDS = {
    "6.1": f"{FENTRY_PROBE} && {shlex.join((*PYTEST, 'tests/kernel/test_hooks.py', *USER_TESTS))}",
    "5.10": "OTEL_EBPF_OPEN_PORT=80 OTEL_EBPF_LOG_LEVEL=ERROR .venv/bin/obi; echo \"obi exited $?\"",
    "sid": ".venv/bin/python -m tests.matrix.load_capture",
}
GUEST_EXPECT = {
    "6.1": ["fentry probe: None"] + [f"{test} PASSED" for test in HOOK_TESTS + USER_TESTS],
    "5.10": ["obi: BPF atomic or, and and cmpxchg (Linux 5.12+) is not supported on this kernel: "
             "Operation not supported (`obi doctor` shows what this host allows)", "obi exited 1"],
    "sid": [f"load {hooks}: ok (" for hooks in ("fentry", "kprobe", "tracepoint", "raw_tracepoint")],
}
GUEST_TIMEOUT = 2100  # seconds for one kernel, boot included


@pytest.mark.timeout(GUEST_TIMEOUT + 120)
@pytest.mark.parametrize("name", MATRIX)
def test_kernel_in_a_guest(name: str) -> None:
    for build in GO_BUILDS:
        build_go(*build)
    try:
        kernel = fetch(name)
        run = boot(kernel, GUEST_COMMANDS[name], timeout=GUEST_TIMEOUT)
    except VmError as e:
        pytest.fail(f"kernel {name}: {e}", pytrace=False)
    print(f"kernel {name} ({kernel.package} {kernel.version}): boot {run.boot_seconds:.0f} s, "
          f"total {run.wall_seconds:.0f} s, console in {run.run_dir}")
    assert run.uname == kernel.release, f"the guest booted {run.uname!r}, not {kernel.release!r}"
    missing = [line for line in GUEST_EXPECT[name] if line not in run.output]
    if run.status != 0 or missing:
        pytest.fail(f"the {kernel.release} guest exited {run.status}, missing {missing}:\n{run.output}",
                    pytrace=False)
