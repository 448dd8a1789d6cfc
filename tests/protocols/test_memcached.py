"""The Memcached parser and spans against real exchanges recorded from memcached
(corpus/memcached.jsonl, made by tools/record_memcached_corpus.py), their every truncation,
and arbitrary bytes."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obi.ebpf._libbpf import lib
from obi.protocols.base import IdGenerator, SpanStats
from obi.protocols.errors import ParseError
from obi.protocols.memcached import Memcached, looks_like_memcached, parse_commands, parse_replies
from tests.protocols.recorded import load_corpus
from tests.protocols.test_redis_spans import CONNECTION, exchange

CORPUS = load_corpus("memcached")
BY_NAME = {c["name"]: c for c in CORPUS}


@pytest.mark.parametrize("case", CORPUS, ids=[c["name"] for c in CORPUS])
def test_recorded_exchanges_give_every_command_and_its_reply(case: dict[str, Any]) -> None:
    commands = parse_commands(case["request"])
    assert [c.name for c in commands] == case["commands"]
    assert all(c.complete for c in commands)
    assert looks_like_memcached(case["request"])
    expecting = [c for c in commands if c.expects_reply]
    replies = parse_replies(case["response"])
    if any(c.quiet for c in commands):
        assert len(replies) <= len(commands)
    else:
        assert len(replies) == len(expecting), case["name"]


def spans_of(name: str, **kw: Any) -> list[tuple[str, str]]:
    case = BY_NAME[name]
    memcached = Memcached(IdGenerator(1), kw.pop("stats", None))
    ex = exchange(case["request"], case["response"], **kw)
    assert memcached.detect(ex)
    return [(s.operation, s.error_type) for s in memcached.spans(memcached.parse(ex), ex, CONNECTION)]


def test_spans_errors_noreply_and_quiet_meta_commands() -> None:
    assert spans_of("incr-not-a-number") == [("set", ""), ("incr", "CLIENT_ERROR")]
    assert spans_of("too-large") == [("set", "SERVER_ERROR")]
    # misses and refusals are answers, not errors
    assert spans_of("delete-touch") == [("delete", ""), ("delete", ""), ("touch", ""), ("touch", "")]
    # noreply commands get no reply: the get's VALUE is the get's
    assert spans_of("noreply") == [("set", ""), ("delete", ""), ("get", "")]
    assert spans_of("meta") == [(n, "") for n in ("ms", "mg", "mg", "md", "ma", "mn")]
    assert spans_of("meta-quiet") == [("mg", ""), ("mg", ""), ("mn", "")]


def test_unanswered_and_truncated() -> None:
    stats = SpanStats()
    case = BY_NAME["set-get"]
    memcached = Memcached(IdGenerator(1), stats)
    ex = exchange(case["request"], b"", end=lib.OBI_END_CLOSE)
    spans = memcached.spans(memcached.parse(ex), ex, CONNECTION)
    assert [(s.operation, s.error_type) for s in spans] == [("set", "connection_closed"),
                                                            ("get", "connection_closed")]
    assert stats.unanswered == 2
    big = BY_NAME["big-value"]
    cut = exchange(big["request"][:4096], big["response"][:512], request_len=len(big["request"]),
                   response_len=len(big["response"]))
    spans = memcached.spans(memcached.parse(cut), cut, CONNECTION)
    assert [(s.operation, s.error_type) for s in spans] == [("set", "")]  # get: past the capture
    assert stats.requests_truncated == 1


def test_query_text_is_the_command_line_without_its_data() -> None:
    memcached = Memcached(IdGenerator(1), query_text=True)
    ex = exchange(BY_NAME["set-get"]["request"], BY_NAME["set-get"]["response"])
    assert [s.query_text for s in memcached.spans(memcached.parse(ex), ex, CONNECTION)] == [
        "set user:1 0 0 5", "get user:1"]


@settings(max_examples=300, deadline=None)
@given(case=st.sampled_from(CORPUS), data=st.data())
def test_every_truncation_is_a_consistent_prefix(case: dict[str, Any], data: st.DataObject) -> None:
    """A capture cut anywhere gives the first commands and replies, each the same as in the
    whole exchange (a name cut short is "", never a wrong one)."""
    request, response = case["request"], case["response"]
    full_commands, full_replies = parse_commands(request), parse_replies(response)
    commands = parse_commands(request[:data.draw(st.integers(0, len(request)))])
    assert len(commands) <= len(full_commands)
    for got, whole in zip(commands, full_commands, strict=False):
        assert got.name in ("", whole.name)
        assert got.complete or got is commands[-1]
    replies = parse_replies(response[:data.draw(st.integers(0, len(response)))])
    assert replies == full_replies[:len(replies)]


@settings(max_examples=500, deadline=None)
@given(request=st.binary(max_size=200), response=st.binary(max_size=200))
def test_arbitrary_bytes_are_a_parse_error_or_facts(request: bytes, response: bytes) -> None:
    with contextlib.suppress(ParseError):
        parse_commands(request)
    with contextlib.suppress(ParseError):
        parse_replies(response)


TOKENS = [b"get", b"set", b"mg", b"ms", b" ", b"\r\n", b"\r", b"k", b"0", b"5", b"-1", b"99999999999",
          b"noreply", b"q", b"v", b"VALUE", b"END", b"VA", b"STORED", b"ERROR", b"CLIENT_ERROR", b"x" * 10]


@settings(max_examples=1000, deadline=None)
@given(request=st.lists(st.sampled_from(TOKENS), max_size=30).map(b"".join),
       response=st.lists(st.sampled_from(TOKENS), max_size=30).map(b"".join))
def test_protocol_shaped_garbage_is_a_parse_error_or_facts(request: bytes, response: bytes) -> None:
    with contextlib.suppress(ParseError):
        parse_commands(request)
    with contextlib.suppress(ParseError):
        parse_replies(response)


def test_refusals_and_detection() -> None:
    assert not looks_like_memcached(b"GET / HTTP/1.1\r\n")
    assert not looks_like_memcached(b"*1\r\n$4\r\nPING\r\n")
    assert not looks_like_memcached(b"getaway\r\n")
    for bad in (b"set k 0 0 x\r\n", b"bogus k\r\n", b"set k 0 0\r\n", b"set k 0 0 2\r\nabc\r\n"):
        with pytest.raises(ParseError):
            parse_commands(bad)
    with pytest.raises(ParseError):
        parse_replies(b"VALUE k 0\r\n")
