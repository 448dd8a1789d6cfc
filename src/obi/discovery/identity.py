"""Service identity of a process: name, namespace, instance, language, resource attributes.

Follows OBI: OTEL_SERVICE_NAME, else ``service.name`` from OTEL_RESOURCE_ATTRIBUTES
(values that are empty or start with ``$`` are unresolved and ignored), else
the base name of /proc/PID/exe; the language comes from mapped runtime
libraries, the ELF sections, then the executable name.
"""

from __future__ import annotations

import os
import re
import socket
import struct
from collections.abc import Callable

from obi.config.values import parse_key_values
from obi.traces.model import ServiceIdentity

_ENV_SERVICE_NAME = "OTEL_SERVICE_NAME"
_ENV_SERVICE_NAMESPACE = "OTEL_SERVICE_NAMESPACE"
_ENV_RESOURCE_ATTRIBUTES = "OTEL_RESOURCE_ATTRIBUTES"
_ATTR_SERVICE_NAME = "service.name"
_ATTR_SERVICE_NAMESPACE = "service.namespace"

_GO_SECTIONS = (b".gopclntab", b".go.buildinfo")
_ELF_MAGIC = b"\x7fELF"
_MAX_SECTION_HEADERS = 4096
_MAX_SHSTRTAB = 1 << 20

# Runtime libraries that name the language on their own (OBI checks these first).
_RUNTIME_LIBRARIES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"/libjvm\.so$"), "java"),
    (re.compile(r"/libcoreclr\.so$"), "dotnet"),
    (re.compile(r"/libnode\.so[.\d]*$"), "nodejs"),
    (re.compile(r"/libruby[-.\w]*\.so[.\d]*$"), "ruby"),
    (re.compile(r"/libpython[\d.]+m?\.so[.\d]*$"), "python"),
)
# Interpreter executables, matched on the base name of the executable.
_INTERPRETERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^python[\d.]*m?$"), "python"),
    (re.compile(r"^(node|nodejs)$"), "nodejs"),
    (re.compile(r"^ruby[\d.]*$"), "ruby"),
    (re.compile(r"^java$"), "java"),
    (re.compile(r"^dotnet$"), "dotnet"),
)
_CPP_LIBRARIES = ("libstdc++.so", "libc++.so")


def parse_environ(data: bytes) -> dict[str, str]:
    """Parse the NUL-separated ``KEY=value`` records of /proc/PID/environ."""
    env: dict[str, str] = {}
    for record in data.split(b"\0"):
        key, sep, value = record.partition(b"=")
        if sep and key:
            env[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return env


def parse_resource_attributes(text: str) -> dict[str, str]:
    """Parse a process's OTEL_RESOURCE_ATTRIBUTES (``k=v,k2=v2``, percent-encoded); skips malformed items."""
    return dict(parse_key_values(text, "resource attribute", skip_malformed=True))


def _resolved(value: str | None) -> str:
    """The value, or "" when it is missing, empty or an unexpanded ``$VAR``."""
    if not value or value.startswith("$"):
        return ""
    return value


def service_names(env: dict[str, str]) -> tuple[str, str, dict[str, str]]:
    """(service name, service namespace, other resource attributes) declared by an environment."""
    declared = {
        key: value
        for key, value in parse_resource_attributes(env.get(_ENV_RESOURCE_ATTRIBUTES, "")).items()
        if _resolved(value)
    }
    name = _resolved(env.get(_ENV_SERVICE_NAME)) or declared.pop(_ATTR_SERVICE_NAME, "")
    declared.pop(_ATTR_SERVICE_NAME, None)
    namespace = declared.pop(_ATTR_SERVICE_NAMESPACE, "") or _resolved(env.get(_ENV_SERVICE_NAMESPACE))
    return name, namespace, declared


def elf_section_names(read_at: Callable[[int, int], bytes]) -> set[bytes]:
    """Names of the sections of an ELF file read through ``read_at(offset, size)``.

    Empty when the data is not a well-formed ELF file; reads only the headers
    and the section-name table, never the whole file.
    """
    header = read_at(0, 64)
    if len(header) < 52 or header[:4] != _ELF_MAGIC:
        return set()
    is_64 = header[4] == 2
    order = "<" if header[5] == 1 else ">"
    if is_64:
        if len(header) < 64:
            return set()
        (shoff,) = struct.unpack_from(order + "Q", header, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", header, 0x3A)
    else:
        (shoff,) = struct.unpack_from(order + "I", header, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", header, 0x2E)
    min_entry = 64 if is_64 else 40
    if not shoff or not shnum or shnum > _MAX_SECTION_HEADERS or shstrndx >= shnum:
        return set()
    if shentsize < min_entry:
        return set()
    table = read_at(shoff, shentsize * shnum)
    if len(table) < shentsize * shnum:
        return set()
    entries: list[tuple[int, int, int]] = []  # (name offset, file offset, size)
    for index in range(shnum):
        base = index * shentsize
        if is_64:
            (name_off,) = struct.unpack_from(order + "I", table, base)
            offset, size = struct.unpack_from(order + "QQ", table, base + 0x18)
        else:
            (name_off,) = struct.unpack_from(order + "I", table, base)
            offset, size = struct.unpack_from(order + "II", table, base + 0x10)
        entries.append((name_off, offset, size))
    _, str_offset, str_size = entries[shstrndx]
    strings = read_at(str_offset, min(str_size, _MAX_SHSTRTAB))
    names: set[bytes] = set()
    for name_off, _, _ in entries:
        end = strings.find(b"\0", name_off)
        if 0 <= name_off < len(strings) and end >= 0:
            names.add(strings[name_off:end])
    return names


def is_go_executable(path: str) -> bool:
    """Whether the ELF file at ``path`` (e.g. /proc/PID/exe) was built by Go."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        sections = elf_section_names(lambda offset, size: os.pread(fd, size, offset))
        return any(section in sections for section in _GO_SECTIONS)
    except (OSError, struct.error):
        return False
    finally:
        os.close(fd)


def _mapped_files(proc_root: str, pid: int) -> list[str]:
    try:
        with open(f"{proc_root}/{pid}/maps", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    files: list[str] = []
    seen: set[str] = set()
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/") and parts[5] not in seen:
            seen.add(parts[5])
            files.append(parts[5])
    return files


def detect_sdk_language(pid: int, exe_path: str, env: dict[str, str], proc_root: str = "/proc") -> str:
    """The telemetry.sdk.language OBI reports for a process ("generic" when unknown)."""
    mapped = _mapped_files(proc_root, pid)
    for path in mapped:
        for pattern, language in _RUNTIME_LIBRARIES:
            if pattern.search(path):
                return language
    if is_go_executable(f"{proc_root}/{pid}/exe"):
        return "go"
    exe_name = os.path.basename(exe_path)
    for pattern, language in _INTERPRETERS:
        if pattern.match(exe_name):
            return language
    if "php" in exe_path:
        return "php"
    if any(key.startswith(("DOTNET_", "ASPNETCORE_")) for key in env):
        return "dotnet"
    if any(library in path for path in mapped for library in _CPP_LIBRARIES):
        return "cpp"
    return "generic"


def read_environ(pid: int, proc_root: str = "/proc") -> dict[str, str]:
    """The environment of a process; empty when unreadable (needs root for other users)."""
    try:
        with open(f"{proc_root}/{pid}/environ", "rb") as f:
            return parse_environ(f.read())
    except OSError:
        return {}


def read_exe_path(pid: int, proc_root: str = "/proc") -> str:
    try:
        return os.readlink(f"{proc_root}/{pid}/exe").removesuffix(" (deleted)")
    except OSError:
        return ""


def build_identity(
    pid: int,
    *,
    proc_root: str = "/proc",
    exe_path: str | None = None,
    hostname: str | None = None,
    start_time: int = 0,
) -> ServiceIdentity:
    """Build the ServiceIdentity of a live process from /proc (never raises for a vanished one)."""
    if exe_path is None:
        exe_path = read_exe_path(pid, proc_root)
    if hostname is None:
        hostname = socket.gethostname()
    env = read_environ(pid, proc_root)
    name, namespace, declared = service_names(env)
    exe_name = os.path.basename(exe_path)
    attributes = {"host.name": hostname, "os.type": "linux"}
    attributes.update(declared)
    return ServiceIdentity(
        pid=pid,
        exe_path=exe_path,
        service_name=name or exe_name or "unknown_service",
        service_namespace=namespace,
        instance_id=f"{hostname}:{pid}",
        sdk_language=detect_sdk_language(pid, exe_path, env, proc_root),
        name_from_env=bool(name),
        start_time=start_time,
        attributes=attributes,
    )
