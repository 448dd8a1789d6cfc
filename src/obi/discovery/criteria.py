"""Selection criteria: which processes to instrument (OBI ``discovery`` semantics).

A ``Selector`` is one ``discovery.instrument`` / ``exclude_instrument`` entry (or
one of the ``OTEL_EBPF_OPEN_PORT`` / ``OTEL_EBPF_AUTO_TARGET_EXE`` /
``OTEL_EBPF_TARGET_PID`` shortcuts): every field it sets must match. A
``Selection`` selects a process when any include selector (or, in
``any_listener`` mode, any listening TCP socket) matches and no exclude
selector does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from obi.config.values import PortRanges, ports_contain
from obi.globs import glob_to_regex


@dataclass(frozen=True, slots=True)
class KubeFacts:
    """The Kubernetes pod and container a process runs in, as selectors see them."""

    namespace: str
    pod_name: str
    container_name: str
    owners: Mapping[str, str]  # kind ("deployment", "replicaset", ...) -> name
    labels: Mapping[str, str]
    annotations: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class ProcessFacts:
    """What matching needs to know of one process, read from /proc."""

    pid: int
    start_time: int  # clock ticks since boot (/proc/PID/stat field 22)
    ppid: int
    exe_path: str  # target of /proc/PID/exe, "" when unreadable
    listen_ports: frozenset[int] = frozenset()  # TCP ports in LISTEN state (IPv4 or IPv6)
    kube: KubeFacts | None = None  # None: not in a known pod (or Kubernetes is off)


def _compiled(pattern: str | None) -> re.Pattern[str] | None:
    return glob_to_regex(pattern) if pattern else None


@dataclass(frozen=True, slots=True)
class KubeCriteria:
    """The k8s_* fields of a discovery entry: globs, and label/annotation maps of globs.

    Every field set must match; a process in no known pod matches none.
    """

    namespace: str | None = None
    pod_name: str | None = None
    container_name: str | None = None
    deployment_name: str | None = None
    replicaset_name: str | None = None
    statefulset_name: str | None = None
    daemonset_name: str | None = None
    owner_name: str | None = None  # any owner of the pod (OBI's k8s_owner_name)
    pod_labels: tuple[tuple[str, str], ...] = ()
    pod_annotations: tuple[tuple[str, str], ...] = ()
    _fields: tuple[tuple[str, re.Pattern[str]], ...] = field(
        init=False, default=(), repr=False, compare=False, hash=False
    )
    _labels: tuple[tuple[str, re.Pattern[str]], ...] = field(
        init=False, default=(), repr=False, compare=False, hash=False
    )
    _annotations: tuple[tuple[str, re.Pattern[str]], ...] = field(
        init=False, default=(), repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        fields = []
        for name in ("namespace", "pod_name", "container_name", "deployment_name", "replicaset_name",
                     "statefulset_name", "daemonset_name", "owner_name"):
            regex = _compiled(getattr(self, name))
            if regex is not None:
                fields.append((name, regex))
        object.__setattr__(self, "_fields", tuple(fields))
        object.__setattr__(self, "_labels", tuple((k, glob_to_regex(v)) for k, v in self.pod_labels))
        object.__setattr__(self, "_annotations",
                           tuple((k, glob_to_regex(v)) for k, v in self.pod_annotations))

    @property
    def is_empty(self) -> bool:
        return not self._fields and not self._labels and not self._annotations

    def matches(self, kube: KubeFacts | None) -> bool:
        if kube is None:
            return False
        for name, regex in self._fields:
            if name == "owner_name":
                if not any(regex.match(owner) for owner in kube.owners.values()):
                    return False
                continue
            value = _kube_value(kube, name)
            if value is None or not regex.match(value):
                return False
        return _map_matches(self._labels, kube.labels) and _map_matches(self._annotations, kube.annotations)


def _kube_value(kube: KubeFacts, name: str) -> str | None:
    if name == "namespace":
        return kube.namespace
    if name == "pod_name":
        return kube.pod_name
    if name == "container_name":
        return kube.container_name
    return kube.owners.get(name.removesuffix("_name"))


def _map_matches(wanted: tuple[tuple[str, re.Pattern[str]], ...], actual: Mapping[str, str]) -> bool:
    for key, regex in wanted:
        value = actual.get(key)
        if value is None or not regex.match(value):
            return False
    return True


@dataclass(frozen=True, slots=True)
class Selector:
    """One selection entry; every field that is set must match (an empty one matches nothing)."""

    open_ports: PortRanges = ()
    exe_path: str | None = None  # glob (obi.globs syntax) on the full path of /proc/PID/exe
    pids: tuple[int, ...] = ()
    # A regular expression searched in the executable path (OBI's deprecated executable_path).
    exe_path_regex: str | None = None
    kube: KubeCriteria | None = None
    _exe_regex: re.Pattern[str] | None = field(
        init=False, default=None, repr=False, compare=False, hash=False
    )
    _exe_search: re.Pattern[str] | None = field(
        init=False, default=None, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        regex = glob_to_regex(self.exe_path) if self.exe_path else None
        object.__setattr__(self, "_exe_regex", regex)
        search = re.compile(self.exe_path_regex) if self.exe_path_regex else None
        object.__setattr__(self, "_exe_search", search)

    @property
    def is_empty(self) -> bool:
        return (not self.open_ports and not self.exe_path and not self.pids and not self.exe_path_regex
                and (self.kube is None or self.kube.is_empty))

    def matches(self, facts: ProcessFacts) -> bool:
        if self.is_empty:
            return False
        if self.kube is not None and not self.kube.is_empty and not self.kube.matches(facts.kube):
            return False
        if self.pids and facts.pid not in self.pids:
            return False
        if self._exe_regex is not None and not self._exe_regex.match(facts.exe_path):
            return False
        if self._exe_search is not None and not self._exe_search.search(facts.exe_path):
            return False
        return not self.open_ports or any(
            ports_contain(self.open_ports, port) for port in facts.listen_ports
        )


@dataclass(frozen=True, slots=True)
class Selection:
    """The whole discovery policy: include selectors, exclude selectors, listener mode."""

    include: tuple[Selector, ...] = ()
    exclude: tuple[Selector, ...] = ()
    any_listener: bool = False  # select any process with a listening TCP socket

    @property
    def needs_ports(self) -> bool:
        """Whether matching needs listening ports (the costly part of a /proc scan)."""
        return self.any_listener or any(s.open_ports for s in self.include + self.exclude)

    @property
    def needs_kube(self) -> bool:
        """Whether matching needs the pod of each process (Kubernetes metadata)."""
        return any(s.kube is not None and not s.kube.is_empty for s in self.include + self.exclude)

    def matches(self, facts: ProcessFacts) -> bool:
        if any(s.matches(facts) for s in self.exclude):
            return False
        if self.any_listener and facts.listen_ports:
            return True
        return any(s.matches(facts) for s in self.include)
