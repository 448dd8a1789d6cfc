"""How configuration becomes the discovery policy."""

from __future__ import annotations

from pathlib import Path

from obi.config import load_config
from obi.discovery.criteria import ProcessFacts
from obi.discovery.selection import selection_from_config
from obi.pipeline import inactive_settings


def facts(exe: str, ports: tuple[int, ...] = (), pid: int = 100) -> ProcessFacts:
    return ProcessFacts(pid=pid, start_time=1, ppid=1, exe_path=exe, listen_ports=frozenset(ports))


def test_shortcuts_and_discovery_entries_select() -> None:
    config = load_config(None, {"OTEL_EBPF_OPEN_PORT": "8000-8999", "OTEL_EBPF_TARGET_PID": "4242",
                                "OTEL_EBPF_AUTO_TARGET_EXE": "*/goblog"})
    selection = selection_from_config(config)
    assert selection.matches(facts("/usr/bin/python3", (8080,)))
    assert not selection.matches(facts("/usr/bin/python3", (9090,)))
    assert selection.matches(facts("/app/goblog"))
    assert selection.matches(facts("/bin/sleep", pid=4242))


def test_default_exclusions_apply(tmp_path: object) -> None:
    config = load_config(None, {"OTEL_EBPF_OPEN_PORT": "4317"})
    selection = selection_from_config(config)
    assert not selection.matches(facts("/usr/bin/otelcol-contrib", (4317,)))
    assert selection.matches(facts("/usr/bin/python3", (4317,)))


def test_deprecated_executable_path_is_a_regex() -> None:
    config = load_config(None, {"OTEL_EBPF_EXECUTABLE_PATH": "go(blog|shop)$"})
    selection = selection_from_config(config)
    assert selection.matches(facts("/srv/goshop"))
    assert not selection.matches(facts("/srv/goshop.sh"))


def test_settings_obi_does_not_act_on_yet_are_named(tmp_path: Path) -> None:
    config_file = tmp_path / "obi.yml"
    config_file.write_text("ebpf:\n  track_request_headers: true\n  http_request_timeout: 5s\n"
                           "otel_metrics_export:\n  features: [application, network]\n")
    config = load_config(str(config_file), {})
    assert inactive_settings(config, kube_enabled=False) == [
        "ebpf.track_request_headers",
        "otel_metrics_export.features network: only application metrics",
    ]
    assert inactive_settings(load_config(None, {}), kube_enabled=False) == []
