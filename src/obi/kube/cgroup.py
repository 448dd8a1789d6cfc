"""Container id and pod uid of a process, read from /proc/PID/cgroup.

Handles cgroup v1 (``N:controllers:/path``) and v2 (``0::/path``) lines for
containerd, CRI-O, Docker and podman, with the cgroupfs (``/kubepods/...``)
and systemd (``kubepods-*.slice/...-<id>.scope``) layouts.
"""

from __future__ import annotations

import re

# A container id as the common runtimes write it: 64 lowercase hex digits.
_HEX_ID = re.compile(r"[0-9a-f]{64}")
# Runtime prefixes of a container's cgroup name (systemd scopes, CRI-O cgroupfs).
_RUNTIME_PREFIXES = ("cri-containerd-", "containerd-", "crio-", "cri-o-", "docker-", "libpod-")
# Monitor processes of CRI-O sit beside the container: never the container itself.
_IGNORED_PREFIXES = ("crio-conmon-", "libpod-conmon-")
# Pod cgroup names: pod<uid> (cgroupfs), kubepods[-qos]-pod<uid with _>.slice (systemd).
# Static pods use a 32-hex config hash as uid.
_POD_SEGMENT = re.compile(
    r"(?:kubepods(?:-[a-z]+)?-)?pod"
    r"([0-9a-fA-F]{8}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{32})"
    r"(?:\.slice)?"
)
# A runtime id that is not 64 hex (some sandboxed runtimes): a plain token.
_OTHER_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.-]{7,127}")


def _paths(text: str) -> list[str]:
    """The cgroup path of every well-formed line, in file order."""
    paths: list[str] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[2].startswith("/"):
            paths.append(parts[2])
    return paths


def _strip_runtime(segment: str) -> str | None:
    """The id part of a container cgroup name, or None for a monitor (conmon) cgroup."""
    if segment.startswith(_IGNORED_PREFIXES):
        return None
    segment = segment.removesuffix(".scope")
    for prefix in _RUNTIME_PREFIXES:
        if segment.startswith(prefix):
            return segment[len(prefix) :]
    return segment


def container_id_from_cgroup(text: str) -> str | None:
    """The container id in the contents of /proc/PID/cgroup, or None for a process outside containers."""
    paths = _paths(text)
    for path in paths:
        for segment in reversed(path.split("/")):
            candidate = _strip_runtime(segment)
            if candidate is not None and _HEX_ID.fullmatch(candidate):
                return candidate
    # Runtimes with other id shapes: the cgroup right below a kubepods pod cgroup.
    for path in paths:
        segments = path.split("/")
        for index, segment in enumerate(segments[:-1]):
            if _POD_SEGMENT.fullmatch(segment):
                candidate = _strip_runtime(segments[index + 1])
                if candidate is not None and _OTHER_ID.fullmatch(candidate):
                    return candidate
    return None


def pod_uid_from_cgroup(text: str) -> str | None:
    """The uid of the pod whose cgroup holds the process (systemd's ``_`` read as ``-``), or None."""
    for path in _paths(text):
        for segment in path.split("/"):
            match = _POD_SEGMENT.fullmatch(segment)
            if match:
                return match.group(1).replace("_", "-").lower()
    return None


def container_id(pid: int, proc_root: str = "/proc") -> str | None:
    """The container id of a process, or None when it is in no container or is gone."""
    try:
        with open(f"{proc_root}/{pid}/cgroup", encoding="utf-8", errors="replace") as cgroup:
            return container_id_from_cgroup(cgroup.read())
    except OSError:
        return None
