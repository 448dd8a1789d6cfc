"""Runs the real agent (`python -m obi.cli`) as a child process for end-to-end tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from tests.support import TIME_SCALE, bpf_link_ids


class AgentProcess:
    """The agent with a clean OTEL_* environment plus `env`; logs parsed as JSON."""

    running: ClassVar[set[AgentProcess]] = set()  # started and not stopped (see kill_leftovers)

    def __init__(self, env: Mapping[str, str], args: Sequence[str] = (),
                 command: Sequence[str] | None = None) -> None:
        """`command` replaces `python -m obi.cli ARGS` (e.g. to start obi inside unshare)."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "KUBE"))}
        self.env = {**base, "OTEL_EBPF_LOG_FORMAT": "json", **env}
        self.command = list(command) if command else [sys.executable, "-m", "obi.cli", *args]
        self.logs: list[dict[str, Any]] = []
        self.stdout: list[str] = []
        self._cond = threading.Condition()
        self.proc: subprocess.Popen[str] | None = None
        self.links_before: set[int] = set()

    def start(self, wait_started: bool = True) -> AgentProcess:
        self.links_before = bpf_link_ids()
        self.proc = subprocess.Popen(self.command, env=self.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        AgentProcess.running.add(self)
        threading.Thread(target=self._pump, args=(self.proc.stderr, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stdout, False), daemon=True).start()
        if wait_started:
            self.wait_log(lambda e: e.get("event") == "agent_started", 30)
        return self

    def _pump(self, stream: Any, is_log: bool) -> None:
        for line in stream:
            with self._cond:
                if is_log:
                    try:
                        self.logs.append(json.loads(line))
                    except ValueError:
                        self.logs.append({"event": "raw", "line": line.rstrip()})
                else:
                    self.stdout.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_log(self, match: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout * TIME_SCALE
        with self._cond:
            while True:
                for entry in self.logs:
                    if match(entry):
                        return entry
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc is not None and self.proc.poll() is not None and not left):
                    raise TimeoutError(f"agent log not seen in {timeout}s; logs: {self.logs[-20:]}")
                self._cond.wait(min(left, 0.2))

    def wait_instrumented(self, pid: int, timeout: float = 10.0) -> dict[str, Any]:
        return self.wait_log(lambda e: e.get("event") == "process_instrumented" and e.get("pid") == pid,
                             timeout)

    def agent_pid(self) -> int:
        """The agent's host pid: the process started, or the `obi.cli` below a wrapper."""
        assert self.proc is not None
        todo = [self.proc.pid]
        while todo:
            pid = todo.pop()
            if b"obi.cli" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                return pid
            todo += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        raise AssertionError("no obi.cli process below the agent command")

    @staticmethod
    def held_link_ids(pid: int) -> set[int]:
        """Ids of the BPF links a process holds open (from /proc/PID/fdinfo)."""
        ids: set[int] = set()
        try:
            entries = os.listdir(f"/proc/{pid}/fdinfo")
        except OSError:
            return ids
        for fd in entries:
            try:
                text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("link_id:"):
                    ids.add(int(line.split()[1]))
        return ids

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Stops the agent; checks it left no BPF link behind. Returns its exit code.

        Checked two ways: the links the agent held are gone, and no link appeared on
        the host since it started (the second only holds when nothing else runs BPF)."""
        assert self.proc is not None
        AgentProcess.running.discard(self)
        held: set[int] = set()
        if self.proc.poll() is None:
            agent = self.agent_pid()
            held = self.held_link_ids(agent)
            assert held, "the running agent holds no BPF link"
            os.kill(agent, sig)
            try:
                self.proc.wait(timeout * TIME_SCALE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError(f"agent did not stop within {timeout}s") from None
        time.sleep(0.1)
        now = bpf_link_ids()
        assert not held & now, f"BPF links of the agent left after it exited: {held & now}"
        leftover = now - self.links_before
        assert not leftover, f"BPF links appeared and stayed while the agent ran: {leftover}"
        return self.proc.returncode

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()


def kill_leftovers() -> list[int]:
    """Kills the agents a test started and did not stop (it failed before stop());
    returns their pids. Their BPF links go with them."""
    killed: list[int] = []
    for agent in list(AgentProcess.running):
        AgentProcess.running.discard(agent)
        proc = agent.proc
        if proc is None or proc.poll() is not None:
            continue
        with contextlib.suppress(AssertionError, OSError):
            os.kill(agent.agent_pid(), signal.SIGKILL)  # below a wrapper such as unshare
        proc.kill()
        proc.wait(10)
        killed.append(proc.pid)
    return killed
