"""deploy/systemd: the unit passes `systemd-analyze verify` without a warning, grants
exactly the unprivileged capability list, keeps the system read-only except
/var/run/obi, and its example environment file is a configuration obi accepts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from obi.config import load_config

SYSTEMD = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
UNIT = SYSTEMD / "obi.service"
CAPABILITIES = ("CAP_BPF CAP_PERFMON CAP_SYS_PTRACE CAP_NET_RAW CAP_CHECKPOINT_RESTORE "
                "CAP_DAC_READ_SEARCH")


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value assigned (systemd allows repeated keys)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def environment_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a systemd EnvironmentFile (no quoting used in ours)."""
    env = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def verify(unit_text: str, tmp_path: Path) -> str:
    """`systemd-analyze verify` of the unit with ExecStart pointed at a stub that
    exists here; returns every line it printed."""
    stub = tmp_path / "bin" / "obi"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = tmp_path / "obi.service"
    lines = [f"ExecStart={stub}" if line.startswith("ExecStart=") else line
             for line in unit_text.splitlines()]
    unit.write_text("\n".join(lines) + "\n")
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is part of Debian's systemd package"
    done = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_unit_verifies_without_warnings(tmp_path: Path) -> None:
    output = verify(UNIT.read_text(), tmp_path)
    assert [line for line in output.splitlines() if "obi.service" in line] == []


def test_verify_does_report_a_bad_setting(tmp_path: Path) -> None:
    """The check above can fail: a misspelt setting is a warning naming the unit."""
    text = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystem=strict\nProtectSistem=strict")
    assert "Unknown key 'ProtectSistem'" in verify(text, tmp_path)


def test_capabilities_are_exactly_the_unprivileged_list() -> None:
    service = unit_settings(UNIT.read_text())["Service"]
    assert service["AmbientCapabilities"] == [CAPABILITIES]
    assert service["CapabilityBoundingSet"] == [CAPABILITIES]
    assert service["NoNewPrivileges"] == ["yes"]
    assert "User" not in service, "root with only the capabilities above"


def test_hardening_and_runtime_directory() -> None:
    service = unit_settings(UNIT.read_text())["Service"]
    expected = {
        "ExecStart": ["/opt/obi/bin/obi"],
        "EnvironmentFile": ["/etc/obi/obi.env"],
        "Environment": ["PYTHONDONTWRITEBYTECODE=1 TMPDIR=/var/run/obi"],
        "Restart": ["on-failure"],
        "RestartSec": ["5s"],
        "ProtectSystem": ["strict"],
        "ReadWritePaths": ["/var/run/obi"],
        "RuntimeDirectory": ["obi"],
        "ProtectHome": ["read-only"],
        "ProtectKernelTunables": ["yes"],
        "ProtectControlGroups": ["yes"],
        "ProtectKernelModules": ["yes"],
        "LimitMEMLOCK": ["infinity"],
    }
    assert {key: service.get(key) for key in expected} == expected
    # A private /tmp would hide executables there that obi instruments by path.
    assert "PrivateTmp" not in service


@pytest.mark.parametrize("name", ["OTEL_EBPF_OPEN_PORT", "OTEL_EXPORTER_OTLP_ENDPOINT"])
def test_example_environment_file_sets(name: str) -> None:
    assert name in environment_file(SYSTEMD / "obi.env")


def test_example_environment_file_is_a_configuration_obi_accepts() -> None:
    config = load_config(None, environment_file(SYSTEMD / "obi.env"))
    assert config.open_port == ((8080, 8080), (8443, 8443))
    assert config.otel_traces_export.endpoint == "http://localhost:4318"
    assert config.has_process_selection
