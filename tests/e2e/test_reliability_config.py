"""Bad configuration of every kind: one clear line on stderr naming the key (and the
file), exit code 1, no traceback. Complements tests/e2e/test_cli.py (bad sampler name,
reversed port range, missing file, ftp:// endpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_cli import obi

# (YAML file content, expected error after "obi: config file PATH: ")
BAD_FILES = {
    "unknown key": ("bogus_key: 1\n", "bogus_key: unknown key"),
    "unknown nested key": ("otel_traces_export:\n  endpoit: http://x:4318\n",
                           "otel_traces_export.endpoit: unknown key"),
    "wrong type (list for a duration)": ("shutdown_timeout: [1, 2]\n",
                                         "shutdown_timeout: expected a single value"),
    "wrong type (text for an integer)": ("otel_traces_export:\n  max_queue_size: many\n",
                                         'otel_traces_export.max_queue_size: bad integer "many"'),
    "wrong type (scalar for a list)": ("routes:\n  patterns: 5\n", "routes.patterns: expected a list"),
    "not a mapping": ("- 1\n- 2\n", "expected a mapping of keys at the top level"),
    "invalid YAML": ("a: [\n", "invalid YAML at line 2"),
    "bad endpoint URL": ("otel_traces_export:\n  endpoint: http://x:99999\n",
                         'otel_traces_export.endpoint: bad URL "http://x:99999": invalid port'),
    "bad port range": ("discovery:\n  instrument:\n    - open_ports: 70000\n",
                       "discovery.instrument[0].open_ports: port 70000 out of range"),
    "bad glob": ("discovery:\n  instrument:\n    - exe_path: '[abc'\n",
                 'discovery.instrument[0].exe_path: bad glob "[abc"'),
}

# (environment, expected error after "obi: environment variable ")
BAD_ENV = {
    "wrong type (integer)": ({"OTEL_EBPF_OTLP_TRACES_MAX_QUEUE_SIZE": "abc"},
                             'OTEL_EBPF_OTLP_TRACES_MAX_QUEUE_SIZE: bad integer "abc"'),
    "wrong type (duration)": ({"OTEL_EBPF_SHUTDOWN_TIMEOUT": "soon"},
                              'OTEL_EBPF_SHUTDOWN_TIMEOUT: bad duration "soon"'),
    "wrong type (boolean)": ({"OTEL_EBPF_ENFORCE_SYS_CAPS": "maybe"},
                             'OTEL_EBPF_ENFORCE_SYS_CAPS: bad boolean "maybe"'),
    "unknown choice": ({"OTEL_EBPF_TRACE_PRINTER": "yes"},
                       'OTEL_EBPF_TRACE_PRINTER: unknown trace printer "yes"'),
    "endpoint port out of range": ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:99999"},
                                   "OTEL_EXPORTER_OTLP_ENDPOINT: bad URL"),
    "endpoint without host": ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://:4318"},
                               'OTEL_EXPORTER_OTLP_ENDPOINT: bad URL "http://:4318": missing host'),
    "endpoint without scheme": ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "127.0.0.1:4318"},
                                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: bad URL"),
    "endpoint with a broken IPv6 host": (
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://[::1"},
        'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: bad URL "http://[::1": invalid host'),
    "unknown protocol": ({"OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"},
                         'OTEL_EXPORTER_OTLP_PROTOCOL: unknown protocol "carrier-pigeon"'),
    "open range": ({"OTEL_EBPF_OPEN_PORT": "80-"}, "OTEL_EBPF_OPEN_PORT: bad port"),
    "port out of range": ({"OTEL_EBPF_OPEN_PORT": "70000"}, "OTEL_EBPF_OPEN_PORT: port 70000 out of range"),
    "bad glob": ({"OTEL_EBPF_AUTO_TARGET_EXE": "[abc"}, 'OTEL_EBPF_AUTO_TARGET_EXE: bad glob "[abc"'),
    "bad regular expression": ({"OTEL_EBPF_EXECUTABLE_PATH": "("},
                               "OTEL_EBPF_EXECUTABLE_PATH: bad regular expression"),
}

# Files that cannot be read, even by root: (path, expected reason)
UNREADABLE = {
    "a directory": ("{tmp}", "cannot read: Is a directory"),
    "in a directory that does not exist": ("{tmp}/nowhere/obi.yml", "cannot read: No such file or directory"),
    "unreadable /proc file": ("/proc/self/mem", "cannot read: Input/output error"),
}


def assert_one_line_error(args: tuple[str, ...], env: dict[str, str], expected: str) -> None:
    done = obi(*args, env={"OTEL_EBPF_OPEN_PORT": "80", **env})
    assert done.returncode == 1, done
    assert done.stdout == ""
    assert done.stderr.startswith("obi: ") and done.stderr.count("\n") == 1, done.stderr
    assert expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_file_setting(kind: str, tmp_path: Path) -> None:
    content, expected = BAD_FILES[kind]
    path = tmp_path / "obi.yml"
    path.write_text(content)
    assert_one_line_error(("--config", str(path)), {}, f"obi: config file {path}: {expected}")
    assert_one_line_error((), {"OTEL_EBPF_CONFIG_PATH": str(path)}, f"obi: config file {path}: {expected}")


@pytest.mark.parametrize("kind", BAD_ENV)
def test_bad_environment_variable(kind: str) -> None:
    env, expected = BAD_ENV[kind]
    assert_one_line_error((), env, f"obi: environment variable {expected}")


@pytest.mark.parametrize("kind", UNREADABLE)
def test_unreadable_configuration_file(kind: str, tmp_path: Path) -> None:
    template, expected = UNREADABLE[kind]
    path = template.format(tmp=tmp_path)
    assert_one_line_error(("--config", path), {}, f"obi: config file {path}: {expected}")
