"""Loads the capture once per syscall hook set, the uprobe programs included, and prints a line
for each: "load HOOKS: ok (...)" or what went wrong. Run in a matrix guest (tests/matrix) to show
that a kernel's verifier takes every program; exits 1 if any load failed."""

from __future__ import annotations

import sys
import time

from obi.ebpf.capture import ALL_HOOKS, Capture, CaptureSettings


def main() -> int:
    failed = 0
    for hooks in ALL_HOOKS:
        started = time.monotonic()
        try:
            with Capture(CaptureSettings(syscall_hooks=hooks, uprobes=True)) as capture:
                uprobes = capture.programs.describe()  # waits for the uprobe programs' load
        except Exception as err:  # printed and counted: the next set is still tried
            failed += 1
            print(f"load {hooks}: {err}", flush=True)
            continue
        if not uprobes.endswith(" uprobe programs loaded"):
            failed += 1
            print(f"load {hooks}: {uprobes}", flush=True)
            continue
        print(f"load {hooks}: ok ({uprobes}, {time.monotonic() - started:.0f} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
