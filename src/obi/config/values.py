"""Parsers for single configuration values: durations, port ranges, booleans, key=value lists.

Each parser raises ValueError with a short message that never contains a
secret; the loader adds where the value came from.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from urllib.parse import unquote

PortRanges = tuple[tuple[int, int], ...]

_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # Go accepts both micro signs
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")

# OBI's ${VAR}, ${VAR:-default}, ${env:VAR}, $(VAR) and the $$-escape (pkg/config ReplaceEnv).
_ENV_REFERENCE = re.compile(r"\$?\$[{(](?:env:)?([a-zA-Z_][a-zA-Z0-9_]*)(?::-([^})]*))?[})]")

_TRUE = frozenset({"true", "t", "1"})
_FALSE = frozenset({"false", "f", "0"})


def quote(text: object, limit: int = 80) -> str:
    """Quote a value for a one-line error message."""
    shown = str(text)
    if len(shown) > limit:
        shown = shown[:limit] + "..."
    escaped = shown.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'


def parse_duration(text: str) -> float:
    """Parse a Go duration ("1m30s", "100ms", "0") into seconds; negative is refused."""
    value = text.strip()
    if value == "0":
        return 0.0
    if not value:
        raise ValueError("empty duration")
    if value.startswith("-"):
        raise ValueError(f"negative duration {quote(text)}")
    body = value[1:] if value.startswith("+") else value
    total = 0.0
    pos = 0
    for match in _DURATION_PART.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(body) or pos == 0:
        if re.fullmatch(r"\d+(\.\d*)?", body):
            raise ValueError(f"bad duration {quote(text)}: missing unit (e.g. 5s, 100ms)")
        raise ValueError(f"bad duration {quote(text)} (e.g. 5s, 100ms, 1m30s)")
    return total


def parse_millis(text: str) -> float:
    """Parse a whole number of milliseconds (OTel SDK variables) into seconds."""
    value = text.strip()
    if not re.fullmatch(r"\d+", value):
        raise ValueError(f"bad number of milliseconds {quote(text)}")
    return int(value) / 1000.0


def parse_bool(text: str) -> bool:
    """Parse a boolean as Go's strconv.ParseBool does, case-insensitively."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"bad boolean {quote(text)} (accepted: true, false)")


def parse_int(text: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """Parse a decimal integer within optional bounds."""
    value = text.strip()
    if not re.fullmatch(r"[+-]?\d+", value):
        raise ValueError(f"bad integer {quote(text)}")
    return check_int(int(value), minimum, maximum)


def check_int(value: int, minimum: int | None = None, maximum: int | None = None) -> int:
    if minimum is not None and value < minimum:
        raise ValueError(f"{value} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{value} is above the maximum {maximum}")
    return value


def parse_float(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"bad number {quote(text)}") from None
    if not math.isfinite(value):
        raise ValueError(f"bad number {quote(text)}")
    return value


def _parse_port(text: str, whole: str) -> int:
    if not re.fullmatch(r"\d+", text):
        raise ValueError(f"bad port {quote(text)} in {quote(whole)}")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} out of range 1-65535 in {quote(whole)}")
    return port


def parse_port_ranges(text: str) -> PortRanges:
    """Parse "80,443,8000-8999" into ((80, 80), (443, 443), (8000, 8999))."""
    ranges: list[tuple[int, int]] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            raise ValueError(f"empty entry in port list {quote(text)}")
        low_text, dash, high_text = item.partition("-")
        low = _parse_port(low_text.strip(), text)
        high = _parse_port(high_text.strip(), text) if dash else low
        if high < low:
            raise ValueError(f"bad port range {quote(item)}")
        ranges.append((low, high))
    return tuple(ranges)


def ports_contain(ranges: PortRanges, port: int) -> bool:
    """Whether ``port`` falls in any of the ranges."""
    return any(low <= port <= high for low, high in ranges)


def parse_pids(text: str) -> tuple[int, ...]:
    """Parse a PID or a comma-separated list of PIDs."""
    pids: list[int] = []
    for raw in text.split(","):
        item = raw.strip()
        if not re.fullmatch(r"\d+", item) or int(item) < 1:
            raise ValueError(f"bad process id {quote(item)} in {quote(text)}")
        pids.append(int(item))
    return tuple(pids)


def parse_key_values(
    text: str, what: str, *, skip_malformed: bool = False
) -> tuple[tuple[str, str], ...]:
    """Parse OTel's ``k=v,k2=v2`` lists (headers, resource attributes); keys and values are
    trimmed, then URL-decoded. Blank entries are skipped.

    An entry without ``=`` or with an empty key is a ValueError naming the entry by
    position only (values may be secrets), or is skipped with ``skip_malformed`` (for
    another process's environment, which obi takes as it finds it).
    """
    pairs: list[tuple[str, str]] = []
    for index, raw in enumerate(text.split(","), start=1):
        if not raw.strip():
            continue
        key, equals, value = raw.partition("=")
        key = unquote(key.strip())
        if not equals or not key:
            if skip_malformed:
                continue
            raise ValueError(f"{what} entry {index} is not key=value")
        pairs.append((key, unquote(value.strip())))
    return tuple(pairs)


def expand_env(text: str, environ: Mapping[str, str]) -> str:
    """Replace ${VAR} and ${VAR:-default} references as OBI does; ``$${VAR}`` stays literal."""

    def replace(match: re.Match[str]) -> str:
        whole = match.group(0)
        if whole.startswith("$$"):
            return whole[1:]
        value = environ.get(match.group(1), "")
        default = match.group(2)
        if not value and default:
            return default
        return value

    return _ENV_REFERENCE.sub(replace, text)
