"""OpenTelemetry trace samplers, chosen by OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG.

Same decisions as the OpenTelemetry SDK samplers (without the SDK): a ratio
sampler keeps a trace when the lower 64 bits of its id, big-endian, are below
``ratio * 2**64``, so every service sampling at one ratio keeps the same traces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Protocol, get_args

__all__ = [
    "RATIO_SAMPLER_NAMES",
    "SAMPLER_NAMES",
    "AlwaysOffSampler",
    "AlwaysOnSampler",
    "ParentBasedSampler",
    "Sampler",
    "SamplerName",
    "TraceIdRatioSampler",
    "build_sampler",
]

SamplerName = Literal[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
]
SAMPLER_NAMES: tuple[SamplerName, ...] = get_args(SamplerName)
# The samplers that read OTEL_TRACES_SAMPLER_ARG as a ratio.
RATIO_SAMPLER_NAMES: frozenset[SamplerName] = frozenset({"traceidratio", "parentbased_traceidratio"})
DEFAULT_RATIO = 1.0
_TRACE_ID_LOW_BITS = 64


class Sampler(Protocol):
    """Decides whether a new span's trace is recorded and exported."""

    @property
    def description(self) -> str: ...

    def should_sample(self, trace_id: bytes, parent_sampled: bool | None) -> bool:
        """``parent_sampled`` is None for a root span (no parent context)."""
        ...


@dataclass(frozen=True, slots=True)
class AlwaysOnSampler:
    description: str = field(default="AlwaysOnSampler", init=False)

    def should_sample(self, trace_id: bytes, parent_sampled: bool | None) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class AlwaysOffSampler:
    description: str = field(default="AlwaysOffSampler", init=False)

    def should_sample(self, trace_id: bytes, parent_sampled: bool | None) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class TraceIdRatioSampler:
    """Keeps a deterministic fraction ``ratio`` (0..1) of trace ids."""

    ratio: float
    bound: int = field(init=False)
    description: str = field(init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"trace id ratio must be between 0 and 1, got {self.ratio}")
        object.__setattr__(self, "bound", round(self.ratio * (1 << _TRACE_ID_LOW_BITS)))
        object.__setattr__(self, "description", f"TraceIdRatioBased{{{self.ratio}}}")

    def should_sample(self, trace_id: bytes, parent_sampled: bool | None) -> bool:
        return int.from_bytes(trace_id[-8:], "big") < self.bound


@dataclass(frozen=True, slots=True)
class ParentBasedSampler:
    """Follows the parent's sampled flag when there is a parent, else asks ``root``."""

    root: Sampler
    description: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "description", f"ParentBased{{root:{self.root.description}}}")

    def should_sample(self, trace_id: bytes, parent_sampled: bool | None) -> bool:
        if parent_sampled is None:
            return self.root.should_sample(trace_id, None)
        return parent_sampled


def _ratio(arg: str | float | None) -> float:
    """The sampler argument as a ratio; missing or blank means 1.0."""
    if arg is None or (isinstance(arg, str) and not arg.strip()):
        return DEFAULT_RATIO
    try:
        ratio = float(arg)
    except ValueError:
        ratio = math.nan
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(
            f"invalid traces sampler argument {arg!r}: expected a ratio between 0 and 1, like 0.25"
        )
    return ratio


def build_sampler(name: str, arg: str | float | None) -> Sampler:
    """The sampler for an OTEL_TRACES_SAMPLER value (case-insensitive) and its argument.

    The argument (text as in OTEL_TRACES_SAMPLER_ARG, or an already parsed
    number) is only read by the ratio samplers. Raises ValueError with a
    one-line message for an unknown name or a bad ratio.
    """
    normalized = name.strip().lower()
    if normalized == "always_on":
        return AlwaysOnSampler()
    if normalized == "always_off":
        return AlwaysOffSampler()
    if normalized == "traceidratio":
        return TraceIdRatioSampler(_ratio(arg))
    if normalized == "parentbased_always_on":
        return ParentBasedSampler(AlwaysOnSampler())
    if normalized == "parentbased_always_off":
        return ParentBasedSampler(AlwaysOffSampler())
    if normalized == "parentbased_traceidratio":
        return ParentBasedSampler(TraceIdRatioSampler(_ratio(arg)))
    raise ValueError(f"unknown traces sampler {name!r}: expected one of {', '.join(SAMPLER_NAMES)}")
