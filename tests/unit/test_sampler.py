"""OTEL_TRACES_SAMPLER samplers, decided without the OpenTelemetry SDK."""

from __future__ import annotations

import random

import pytest

from obi.traces.sampler import (
    AlwaysOffSampler,
    AlwaysOnSampler,
    ParentBasedSampler,
    TraceIdRatioSampler,
    build_sampler,
)

_RNG = random.Random(20240513)
TRACE_IDS = [_RNG.randbytes(16) for _ in range(20_000)]
PARENTS: list[bool | None] = [None, True, False]


def _kept(ratio: float) -> float:
    sampler = TraceIdRatioSampler(ratio)
    return sum(sampler.should_sample(trace_id, None) for trace_id in TRACE_IDS) / len(TRACE_IDS)


def test_always_on_and_off_ignore_the_parent() -> None:
    for parent in PARENTS:
        assert build_sampler("always_on", None).should_sample(TRACE_IDS[0], parent)
        assert not build_sampler("always_off", None).should_sample(TRACE_IDS[0], parent)


@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.25, 0.5, 0.9])
def test_ratio_keeps_about_that_fraction(ratio: float) -> None:
    # 20k ids: the binomial standard deviation is at most 0.0036; allow ~4 of them.
    assert _kept(ratio) == pytest.approx(ratio, abs=0.015)


def test_ratio_edges() -> None:
    assert _kept(0.0) == 0.0
    assert _kept(1.0) == 1.0
    lowest, highest = bytes(16), b"\xff" * 16
    assert not TraceIdRatioSampler(0.0).should_sample(lowest, None)
    assert TraceIdRatioSampler(1.0).should_sample(highest, None)
    assert not TraceIdRatioSampler(0.999).should_sample(highest, None)


def test_ratio_uses_lower_64_bits_big_endian() -> None:
    sampler = TraceIdRatioSampler(0.5)
    half = (1 << 63).to_bytes(8, "big")
    assert sampler.should_sample(b"\xff" * 8 + (half[0] - 1).to_bytes(1, "big") + b"\xff" * 7, None)
    assert not sampler.should_sample(bytes(8) + half, None)
    assert sampler.should_sample(b"\xff" * 8 + bytes(8), None)


def test_ratio_decision_is_deterministic_and_nested() -> None:
    # A trace kept at 1% is kept at 10%: every service agrees on low ratios.
    low, high = TraceIdRatioSampler(0.01), TraceIdRatioSampler(0.1)
    for trace_id in TRACE_IDS:
        if low.should_sample(trace_id, None):
            assert high.should_sample(trace_id, None)


@pytest.mark.parametrize(
    ("name", "root_decides"),
    [
        ("parentbased_always_on", True),
        ("parentbased_always_off", False),
        ("parentbased_traceidratio", None),
    ],
)
def test_parent_based_honours_the_parent(name: str, root_decides: bool | None) -> None:
    sampler = build_sampler(name, "0.5")
    for trace_id in TRACE_IDS[:200]:
        assert sampler.should_sample(trace_id, True)
        assert not sampler.should_sample(trace_id, False)
        root = sampler.should_sample(trace_id, None)
        if root_decides is None:
            assert root == TraceIdRatioSampler(0.5).should_sample(trace_id, None)
        else:
            assert root is root_decides


def test_build_sampler_types_and_descriptions() -> None:
    assert build_sampler("always_on", None) == AlwaysOnSampler()
    assert build_sampler(" Always_Off ", None) == AlwaysOffSampler()
    ratio = build_sampler("traceidratio", "0.25")
    assert ratio == TraceIdRatioSampler(0.25)
    assert ratio.description == "TraceIdRatioBased{0.25}"
    parent = build_sampler("parentbased_traceidratio", "0.01")
    assert parent == ParentBasedSampler(TraceIdRatioSampler(0.01))
    assert parent.description == "ParentBased{root:TraceIdRatioBased{0.01}}"
    assert build_sampler("parentbased_always_on", None).description == "ParentBased{root:AlwaysOnSampler}"


def test_ratio_defaults_to_one() -> None:
    assert build_sampler("traceidratio", None) == TraceIdRatioSampler(1.0)
    assert build_sampler("parentbased_traceidratio", " ") == ParentBasedSampler(TraceIdRatioSampler(1.0))
    assert build_sampler("traceidratio", "1e-2") == TraceIdRatioSampler(0.01)
    assert build_sampler("traceidratio", 0.5) == TraceIdRatioSampler(0.5)


def test_argument_of_non_ratio_samplers_is_ignored() -> None:
    assert build_sampler("always_on", "not a number") == AlwaysOnSampler()


@pytest.mark.parametrize("arg", ["abc", "-0.1", "1.5", "nan", "inf", "50%"])
def test_bad_ratio(arg: str) -> None:
    for name in ("traceidratio", "parentbased_traceidratio"):
        with pytest.raises(ValueError, match=r"invalid traces sampler argument .*between 0 and 1") as info:
            build_sampler(name, arg)
        assert "\n" not in str(info.value)


def test_ratio_sampler_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        TraceIdRatioSampler(2.0)


@pytest.mark.parametrize("name", ["", "always", "jaeger_remote", "parentbased_jaeger_remote", "xray"])
def test_unknown_sampler(name: str) -> None:
    with pytest.raises(ValueError, match=r"unknown traces sampler.*always_on, always_off, traceidratio"):
        build_sampler(name, None)
