"""The Redis parser against real exchanges recorded from redis-server (corpus/redis.jsonl,
made by tools/record_redis_corpus.py), their every truncation, and arbitrary bytes."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obi.protocols.errors import ParseError
from obi.protocols.redis import (
    RedisCommand,
    RedisReply,
    looks_like_redis,
    parse_commands,
    parse_exchange,
    parse_replies,
)
from tests.protocols.recorded import load_corpus

CORPUS = load_corpus("redis")
BY_NAME = {c["name"]: c for c in CORPUS}


def raw(case: dict[str, Any]) -> tuple[bytes, bytes]:
    return case["request"], case["response"]


@pytest.mark.parametrize("case", CORPUS, ids=[c["name"] for c in CORPUS])
def test_recorded_exchanges_give_every_command_and_its_reply(case: dict[str, Any]) -> None:
    request, response = raw(case)
    pairs = parse_exchange(request, response)
    assert [c.name for c, _ in pairs] == case["commands"]
    assert all(reply is not None for _, reply in pairs)
    assert looks_like_redis(request) == (case["name"] != "inline-ping")


def test_errors_selects_and_arguments() -> None:
    def pairs(name: str) -> list[tuple[RedisCommand, RedisReply | None]]:
        return parse_exchange(*raw(BY_NAME[name]))

    assert [r.error if r else "?" for _, r in pairs("error-wrongtype")] == [None, "WRONGTYPE"]
    assert [r.error if r else "?" for _, r in pairs("error-unknown")] == ["ERR"]
    assert [c.db for c, _ in pairs("select")] == [3, None]
    assert pairs("mget-1000")[1][0] == RedisCommand("MGET", 1000, None)
    assert [r for _, r in pairs("multi-exec")] == [RedisReply(None)] * 4  # OK, QUEUED, QUEUED, EXEC's array
    assert [r for _, r in pairs("resp3-hello")] == [RedisReply(None)] * 5  # map, map, set, null, double


@settings(max_examples=300, deadline=None)
@given(case=st.sampled_from(CORPUS), data=st.data())
def test_every_truncation_is_a_consistent_prefix(case: dict[str, Any], data: st.DataObject) -> None:
    """A capture cut anywhere gives the first commands and replies, each the same as in the whole
    exchange (a name cut short is "", never a wrong one), or at most ParseError."""
    request, response = raw(case)
    full_commands, full_replies = parse_commands(request), parse_replies(response)
    cut_request = request[:data.draw(st.integers(0, len(request)))]
    cut_response = response[:data.draw(st.integers(0, len(response)))]
    commands = parse_commands(cut_request)
    assert len(commands) <= len(full_commands)
    for got, whole in zip(commands, full_commands, strict=False):
        assert got.name in ("", whole.name)
        assert got.args == whole.args or not got.name  # a command cut inside its name: unknown
    replies = parse_replies(cut_response)
    assert replies == full_replies[:len(replies)]


@settings(max_examples=500, deadline=None)
@given(request=st.binary(max_size=200), response=st.binary(max_size=200))
def test_arbitrary_bytes_are_a_parse_error_or_facts(request: bytes, response: bytes) -> None:
    with contextlib.suppress(ParseError):
        parse_exchange(request, response)


RESP_TOKENS = [b"*", b"$", b"+", b"-", b":", b"%", b"~", b">", b"|", b"!", b"=", b"_", b",", b"#", b"(",
               b"\r\n", b"1", b"2", b"-1", b"--1", b"0", b"10", b"GET", b" ", b"9" * 23, b"\xc2\xb2", b"\t"]


@settings(max_examples=1000, deadline=None)
@given(request=st.lists(st.sampled_from(RESP_TOKENS), max_size=30).map(b"".join),
       response=st.lists(st.sampled_from(RESP_TOKENS), max_size=30).map(b"".join))
def test_resp_shaped_garbage_is_a_parse_error_or_facts(request: bytes, response: bytes) -> None:
    """Bytes made of RESP's own pieces reach deeper than random ones (a "--1" length once
    escaped as a plain ValueError)."""
    with contextlib.suppress(ParseError):
        parse_commands(request)
    with contextlib.suppress(ParseError):
        parse_replies(response)


def test_refusals() -> None:
    with pytest.raises(ParseError):
        parse_commands(b"*--1\r\n")
    with pytest.raises(ParseError):
        parse_commands(b"*2\r\n:1\r\n")  # arguments are bulk strings
    with pytest.raises(ParseError):
        parse_replies(b"*1\r\n" * 20 + b":1\r\n")  # nested deeper than MAX_DEPTH
    with pytest.raises(ParseError):
        parse_replies(b"$3\r\nabcXY")  # a bulk string without its CRLF
    with pytest.raises(ParseError):
        parse_exchange(b"", b"+OK\r\n")
