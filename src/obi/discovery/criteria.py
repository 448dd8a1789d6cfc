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
from dataclasses import dataclass, field

from obi.globs import glob_to_regex

PortRange = tuple[int, int]  # inclusive bounds


@dataclass(frozen=True, slots=True)
class ProcessFacts:
    """What matching needs to know of one process, read from /proc."""

    pid: int
    start_time: int  # clock ticks since boot (/proc/PID/stat field 22)
    ppid: int
    exe_path: str  # target of /proc/PID/exe, "" when unreadable
    listen_ports: frozenset[int] = frozenset()  # TCP ports in LISTEN state (IPv4 or IPv6)


def parse_port_ranges(text: str) -> tuple[PortRange, ...]:
    """Parse an OBI port list such as ``"80,443,8000-8999"``. Raises ValueError."""
    ranges: list[PortRange] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        low_text, sep, high_text = item.partition("-")
        try:
            low = int(low_text)
            high = int(high_text) if sep else low
        except ValueError:
            raise ValueError(f"invalid port or port range {item!r}") from None
        if not (0 < low <= high <= 65535):
            raise ValueError(f"invalid port or port range {item!r}")
        ranges.append((low, high))
    return tuple(ranges)


def port_in_ranges(port: int, ranges: tuple[PortRange, ...]) -> bool:
    """True when ``port`` lies in one of the inclusive ``ranges``."""
    return any(low <= port <= high for low, high in ranges)


@dataclass(frozen=True, slots=True)
class Selector:
    """One selection entry; every field that is set must match (an empty one matches nothing)."""

    open_ports: tuple[PortRange, ...] = ()
    exe_path: str | None = None  # glob (obi.globs syntax) on the full path of /proc/PID/exe
    pids: tuple[int, ...] = ()
    # A regular expression searched in the executable path (OBI's deprecated executable_path).
    exe_path_regex: str | None = None
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
        return not self.open_ports and not self.exe_path and not self.pids and not self.exe_path_regex

    def matches(self, facts: ProcessFacts) -> bool:
        if self.is_empty:
            return False
        if self.pids and facts.pid not in self.pids:
            return False
        if self._exe_regex is not None and not self._exe_regex.match(facts.exe_path):
            return False
        if self._exe_search is not None and not self._exe_search.search(facts.exe_path):
            return False
        return not self.open_ports or any(
            port_in_ranges(port, self.open_ports) for port in facts.listen_ports
        )


# OBI's default_exclude_instrument for processes (the Kubernetes-namespace entry
# needs pod metadata and is not expressed here). Config appends these to
# Selection.exclude unless the user sets default_exclude_instrument.
DEFAULT_EXCLUDE_INSTRUMENT: tuple[Selector, ...] = (
    Selector(exe_path="{*/obi,obi,*otelcol,*otelcol-contrib,*otelcol-contrib[!/]*}"),
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

    def matches(self, facts: ProcessFacts) -> bool:
        if any(s.matches(facts) for s in self.exclude):
            return False
        if self.any_listener and facts.listen_ports:
            return True
        return any(s.matches(facts) for s in self.include)
