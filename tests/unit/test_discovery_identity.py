"""Service identity: environ and resource attributes parsing, names, language, ELF sections."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from obi.discovery.identity import (
    build_identity,
    detect_sdk_language,
    elf_section_names,
    is_go_executable,
    parse_environ,
    parse_resource_attributes,
    service_names,
)


def test_parse_environ() -> None:
    data = b"PATH=/usr/bin\0OTEL_SERVICE_NAME=checkout\0EMPTY=\0A=b=c\0NOEQUALS\0\0"
    assert parse_environ(data) == {
        "PATH": "/usr/bin",
        "OTEL_SERVICE_NAME": "checkout",
        "EMPTY": "",
        "A": "b=c",
    }


def test_parse_environ_invalid_utf8() -> None:
    assert parse_environ(b"K=\xff\0") == {"K": "\ufffd"}


def test_parse_resource_attributes() -> None:
    text = "service.name=cart, deployment.environment=prod,team=a%20b%2Cc,bad,=x,k=v=w"
    assert parse_resource_attributes(text) == {
        "service.name": "cart",
        "deployment.environment": "prod",
        "team": "a b,c",
        "k": "v=w",
    }
    assert parse_resource_attributes("") == {}


def test_service_name_prefers_otel_service_name() -> None:
    env = {
        "OTEL_SERVICE_NAME": "checkout",
        "OTEL_RESOURCE_ATTRIBUTES": "service.name=cart,service.namespace=shop,team=core",
    }
    assert service_names(env) == ("checkout", "shop", {"team": "core"})


def test_service_name_from_resource_attributes() -> None:
    env = {"OTEL_RESOURCE_ATTRIBUTES": "service.name=cart"}
    assert service_names(env) == ("cart", "", {})


def test_unresolved_values_are_ignored() -> None:
    env = {
        "OTEL_SERVICE_NAME": "$(SERVICE)",
        "OTEL_RESOURCE_ATTRIBUTES": "service.name=cart,k8s.pod.name=$(POD),empty=",
    }
    assert service_names(env) == ("cart", "", {})


def test_namespace_env_fallback() -> None:
    assert service_names({"OTEL_SERVICE_NAMESPACE": "shop"}) == ("", "shop", {})


def _elf64(sections: list[bytes]) -> bytes:
    """A minimal little-endian ELF64 file with the given section names."""
    names = b"\0" + b"".join(name + b"\0" for name in sections) + b".shstrtab\0"
    header_size, entry_size = 64, 64
    strtab_offset = header_size
    shoff = strtab_offset + len(names)
    count = len(sections) + 2  # null section + sections + .shstrtab
    header = bytearray(64)
    header[:4] = b"\x7fELF"
    header[4], header[5], header[6] = 2, 1, 1
    struct.pack_into("<Q", header, 0x28, shoff)
    struct.pack_into("<HHH", header, 0x3A, entry_size, count, count - 1)
    table = bytearray(entry_size)  # null section
    offset = 1
    for name in sections:
        entry = bytearray(entry_size)
        struct.pack_into("<I", entry, 0, offset)
        table += entry
        offset += len(name) + 1
    entry = bytearray(entry_size)
    struct.pack_into("<I", entry, 0, offset)
    struct.pack_into("<QQ", entry, 0x18, strtab_offset, len(names))
    table += entry
    return bytes(header) + names + bytes(table)


def _reader(data: bytes) -> Callable[[int, int], bytes]:
    return lambda offset, size: data[offset : offset + size]


def test_elf_section_names() -> None:
    data = _elf64([b".text", b".gopclntab"])
    assert elf_section_names(_reader(data)) == {b"", b".text", b".gopclntab", b".shstrtab"}


@pytest.mark.parametrize("data", [b"", b"#!/bin/sh\n", b"\x7fELF" + b"\0" * 10, _elf64([b".text"])[:100]])
def test_elf_section_names_not_elf_or_truncated(data: bytes) -> None:
    assert elf_section_names(_reader(data)) <= {b""}


def test_is_go_executable(tmp_path: Path) -> None:
    go = tmp_path / "go"
    go.write_bytes(_elf64([b".text", b".go.buildinfo"]))
    c = tmp_path / "c"
    c.write_bytes(_elf64([b".text", b".data"]))
    assert is_go_executable(str(go))
    assert not is_go_executable(str(c))
    assert not is_go_executable(str(tmp_path / "missing"))


def _fake_process(root: Path, pid: int, exe: str, maps: list[str], environ: bytes) -> None:
    proc = root / str(pid)
    proc.mkdir(parents=True)
    (proc / "exe").symlink_to(exe)
    (proc / "maps").write_text(
        "".join(f"7f00-7f01 r-xp 00000000 08:01 1234 {path}\n" for path in maps)
        + "7ffd-7ffe rw-p 00000000 00:00 0 [stack]\n"
    )
    (proc / "environ").write_bytes(environ)


@pytest.mark.parametrize(
    ("exe", "maps", "environ", "language"),
    [
        ("/usr/bin/python3.11", ["/usr/bin/python3.11"], b"", "python"),
        ("/usr/bin/node", ["/usr/bin/node"], b"", "nodejs"),
        ("/opt/jdk/bin/java", ["/opt/jdk/lib/server/libjvm.so"], b"", "java"),
        ("/usr/bin/ruby3.1", ["/usr/lib/libruby-3.1.so.3.1"], b"", "ruby"),
        ("/usr/sbin/php-fpm8.2", [], b"", "php"),
        ("/app/server", ["/usr/share/dotnet/shared/libcoreclr.so"], b"", "dotnet"),
        ("/app/server", [], b"DOTNET_ROOT=/usr/share/dotnet\0", "dotnet"),
        ("/usr/sbin/envoy", ["/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30"], b"", "cpp"),
        ("/usr/sbin/nginx", ["/usr/lib/x86_64-linux-gnu/libc.so.6"], b"", "generic"),
    ],
)
def test_detect_sdk_language(
    tmp_path: Path, exe: str, maps: list[str], environ: bytes, language: str
) -> None:
    _fake_process(tmp_path, 42, exe, maps, environ)
    assert detect_sdk_language(42, exe, parse_environ(environ), str(tmp_path)) == language


def test_detect_go_from_elf(tmp_path: Path) -> None:
    binary = tmp_path / "goblog"
    binary.write_bytes(_elf64([b".text", b".gopclntab"]))
    _fake_process(tmp_path / "proc", 7, str(binary), [str(binary)], b"")
    assert detect_sdk_language(7, str(binary), {}, str(tmp_path / "proc")) == "go"


def test_build_identity_from_environment(tmp_path: Path) -> None:
    environ = (
        b"OTEL_SERVICE_NAME=checkout\0"
        b"OTEL_RESOURCE_ATTRIBUTES=service.namespace=shop,deployment.environment=prod\0"
    )
    _fake_process(tmp_path, 42, "/srv/checkout-bin", [], environ)
    identity = build_identity(42, proc_root=str(tmp_path), hostname="node-1")
    assert identity.pid == 42
    assert identity.exe_path == "/srv/checkout-bin"
    assert identity.service_name == "checkout"
    assert identity.service_namespace == "shop"
    assert identity.instance_id == "node-1:42"
    assert identity.sdk_language == "generic"
    assert identity.attributes == {
        "host.name": "node-1",
        "os.type": "linux",
        "deployment.environment": "prod",
    }


def test_build_identity_falls_back_to_executable_name(tmp_path: Path) -> None:
    _fake_process(tmp_path, 42, "/usr/bin/python3.11", ["/usr/bin/python3.11"], b"")
    (tmp_path / "42" / "environ").unlink()  # unreadable environ: same as without root
    identity = build_identity(42, proc_root=str(tmp_path), hostname="h")
    assert identity.service_name == "python3.11"
    assert identity.service_namespace == ""
    assert identity.sdk_language == "python"


def test_build_identity_of_vanished_process(tmp_path: Path) -> None:
    identity = build_identity(99, proc_root=str(tmp_path), hostname="h")
    assert identity.service_name == "unknown_service"
    assert identity.exe_path == ""
