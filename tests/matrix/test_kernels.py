"""The kernel tests run again on each kernel of the matrix (tests/matrix/vm.py): Debian's
kernels booted in a virtme-ng guest under QEMU without KVM, sharing this machine's file system
and this repository's .venv.

A kernel that cannot be fetched, or a guest that cannot be booted, fails the test (a skip
would hide the kernel). The guest's pytest runs the explicit paths of GUEST_TESTS, never
tests/matrix (its conftest ignores it in a guest as well)."""

from __future__ import annotations

import shlex

import pytest

from tests.matrix.vm import MATRIX, VmError, boot, fetch

pytestmark = pytest.mark.kernel

# What each guest runs. Under software emulation Python runs about ten times slower, a process
# start costs 20-40 s and each load of the capture a minute or more, so the guests run what only
# they can show, in process: on 6.1 every hook set it allows (fentry and kprobes among them, which
# this machine's kernel has not) through every hooked call (tests/kernel/test_hooks.py) and the
# probe auto decides by; on 5.10, older than obi claims, the one-line refusal at start.
PYTEST = (".venv/bin/pytest", "-p", "no:cacheprovider", "-v", "--timeout=600")
FENTRY_PROBE = (".venv/bin/python -c 'from obi.ebpf.capture import fentry_blocker; "
                "print(\"fentry probe:\", fentry_blocker())'")
GUEST_COMMANDS = {
    "6.1": f"{FENTRY_PROBE} && {shlex.join((*PYTEST, 'tests/kernel/test_hooks.py'))}",
    "5.10": "OTEL_EBPF_OPEN_PORT=80 OTEL_EBPF_LOG_LEVEL=ERROR .venv/bin/obi; echo \"obi exited $?\"",
}
GUEST_EXPECT = {
    "6.1": ["fentry probe: None"] + [f"tests/kernel/test_hooks.py::{test}[{hooks}] PASSED"
                                     for test in ("test_server_calls_of_every_kind",
                                                  "test_client_calls_and_a_connect_in_progress",
                                                  "test_a_process_not_traced_that_listens_is_noticed")
                                     for hooks in ("fentry", "kprobe", "tracepoint", "raw_tracepoint")],
    "5.10": ["obi: BPF atomic or, and and cmpxchg (Linux 5.12+) is not supported on this kernel: "
             "Operation not supported (`obi doctor` shows what this host allows)", "obi exited 1"],
}
GUEST_TIMEOUT = 1200  # seconds for one kernel, boot included


@pytest.mark.timeout(GUEST_TIMEOUT + 120)
@pytest.mark.parametrize("name", MATRIX)
def test_kernel_in_a_guest(name: str) -> None:
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
