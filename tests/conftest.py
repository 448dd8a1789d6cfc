"""Suite-wide rules: kernel and end-to-end tests fail (never skip) without root,
and a run that executed none of them fails unless that was asked for."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

# Shared 2-core machines: no per-example deadline, which would flake under load.
settings.register_profile("obi", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("obi")

KERNEL_MARKERS = ("kernel", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.parts
        if "kernel" in parts:
            item.add_marker(pytest.mark.kernel)
        if "e2e" in parts:
            item.add_marker(pytest.mark.e2e)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if any(item.get_closest_marker(m) for m in KERNEL_MARKERS) and os.geteuid() != 0:
        pytest.fail("kernel and end-to-end tests need root on these machines (a skip would hide them)")


@pytest.fixture(autouse=True)
def _no_agent_left_running() -> Iterator[None]:
    """An agent a failing test did not stop is killed, so that it holds no BPF links
    past its test."""
    yield
    from tests.e2e.agent import kill_leftovers

    kill_leftovers()


_kernel_outcomes: dict[str, int] = {"ran": 0}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if any(m in report.keywords for m in KERNEL_MARKERS):
        if report.when == "call":
            _kernel_outcomes["ran"] += 1
        if report.skipped:
            report.outcome = "failed"
            report.longrepr = "kernel/e2e test skipped: on these machines a skip is a failure"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("OBI_UNIT_ONLY") == "1" or session.config.option.collectonly:
        return
    if session.testscollected and _kernel_outcomes["ran"] == 0 and exitstatus == 0:
        print("\nno kernel or end-to-end test ran: failing the run (set OBI_UNIT_ONLY=1 for unit-only runs)")
        session.exitstatus = 1
