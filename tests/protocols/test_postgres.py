"""The PostgreSQL protocol against real exchanges recorded from PostgreSQL 15
(corpus/postgresql.jsonl, made by tools/record_postgres_corpus.py), their every truncation,
and arbitrary bytes."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obi.ebpf._libbpf import lib
from obi.protocols.base import ROLE_SERVER, IdGenerator, SpanStats
from obi.protocols.errors import ParseError
from obi.protocols.postgres import Postgres, looks_like_postgres, parse_messages
from obi.traces.model import DbSpan
from tests.protocols.recorded import load_corpus
from tests.protocols.test_redis_spans import CONNECTION, exchange

CORPUS = load_corpus("postgresql")
BY_NAME = {c["name"]: c for c in CORPUS}


def spans_of(request: bytes, response: bytes, postgres: Postgres | None = None, **kw: Any) -> list[DbSpan]:
    postgres = postgres or Postgres(IdGenerator(1))
    ex = exchange(request, response, **kw)
    assert postgres.detect(ex)
    return postgres.spans(postgres.parse(ex), ex, CONNECTION)


@pytest.mark.parametrize("case", CORPUS, ids=[c["name"] for c in CORPUS])
def test_recorded_exchanges_give_a_span_per_query(case: dict[str, Any]) -> None:
    spans = spans_of(case["request"], case["response"])
    assert [s.operation for s in spans] == case["commands"]
    assert all(s.namespace == "shop" and s.system == "postgresql" for s in spans)


def test_names_errors_and_tables() -> None:
    def outcome(name: str) -> list[tuple[str, str]]:
        case = BY_NAME[name]
        return [(s.name, s.error_type) for s in spans_of(case["request"], case["response"])]

    assert outcome("simple-select") == [("SELECT users", "")]
    assert outcome("simple-error") == [("SELECT nosuch", "42P01")]
    assert outcome("extended") == [("SELECT users", "")]
    assert outcome("prepared-reuse") == [("SELECT users", ""), ("SELECT users", "")]
    assert outcome("extended-error") == [("INSERT users", "23505")]
    assert outcome("parse-error") == [("SELEC", "42601")]  # no Execute: the Parse's error
    assert outcome("two-in-a-cycle") == [("SELECT users", ""), ("DELETE nosuch", "42P01")]
    assert outcome("empty-query") == [("SQL", "")]
    error = spans_of(BY_NAME["simple-error"]["request"], BY_NAME["simple-error"]["response"])[0]
    assert error.status_code == "42P01" and error.is_error


def test_statements_prepared_earlier_are_named_by_their_text() -> None:
    """A statement parsed on one exchange and executed on later ones (psycopg's prepared
    statements): the connection remembers its text."""
    postgres = Postgres(IdGenerator(1))
    case = BY_NAME["prepared-reuse"]
    request, response = case["request"], case["response"]
    sync_end = request.index(b"S\0\0\0\4") + 5  # startup + Parse + Sync
    first_z = response.index(b"Z\0\0\0\5") + 6
    second_z = response.index(b"Z\0\0\0\5", first_z) + 6
    assert spans_of(request[:sync_end], response[:second_z], postgres) == []
    later = spans_of(request[sync_end:], response[second_z:], postgres)
    assert [(s.name, s.namespace) for s in later] == [("SELECT users", "shop")] * 2


def test_a_bind_past_the_capture_is_still_a_span() -> None:
    """INSERT with a 10 KB parameter and a 4 KiB capture: the Execute is beyond it, the
    response says how it went."""
    stats = SpanStats()
    case = BY_NAME["big-bind"]
    spans = spans_of(case["request"][:4096], case["response"], Postgres(IdGenerator(1), stats),
                     request_len=len(case["request"]))
    assert [(s.name, s.error_type) for s in spans] == [("INSERT users", "")]
    assert stats.requests_truncated == 1


def test_authentication_exchanges_are_postgres_and_no_span() -> None:
    """scram-sha-256: the client's SASL messages ('p') get Authentication answers; the last one
    ends with ReadyForQuery, which answers no query."""
    postgres = Postgres(IdGenerator(1))
    startup = BY_NAME["startup"]["request"]
    spans_of(startup, b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0", postgres)
    sasl = b"p\0\0\0\x30SCRAM-SHA-2"  # cut by the capture: still postgres
    assert spans_of(sasl, b"R\0\0\0\x08\0\0\0\0Z\0\0\0\x05I", postgres, request_len=49) == []
    simple = BY_NAME["simple-select"]
    after = simple["response"][simple["response"].index(b"Z\0\0\0\x05") + 6:]
    query = simple["request"][len(startup):]
    assert [s.name for s in spans_of(query, after, postgres)] == ["SELECT users"]


def test_server_spans_query_text_and_unanswered() -> None:
    case = BY_NAME["extended"]
    postgres = Postgres(IdGenerator(1), query_text=True)
    (span,) = spans_of(case["request"], case["response"], postgres, role=ROLE_SERVER, end=lib.OBI_END_READ)
    assert span.kind == 2 and span.query_text == "SELECT name FROM users WHERE id = $1"
    stats = SpanStats()
    closed = spans_of(BY_NAME["simple-select"]["request"], b"", Postgres(IdGenerator(1), stats),
                      end=lib.OBI_END_CLOSE)
    assert [(s.name, s.error_type) for s in closed] == [("SELECT users", "connection_closed")]


@settings(max_examples=300, deadline=None)
@given(case=st.sampled_from(CORPUS), data=st.data())
def test_every_truncation_gives_a_consistent_prefix(case: dict[str, Any], data: st.DataObject) -> None:
    """A capture cut anywhere: never more spans than the whole exchange, and each an earlier
    one's operation or none; never a table named by a cut word."""
    request, response = case["request"], case["response"]
    whole = [(s.operation, s.collection) for s in spans_of(request, response)]
    cut_request = request[:data.draw(st.integers(8, len(request)))]
    cut_response = response[:data.draw(st.integers(0, len(response)))]
    with contextlib.suppress(ParseError):
        got = spans_of(cut_request, cut_response, request_len=len(request), response_len=len(response))
        assert len(got) <= len(whole)
        for span, (operation, table) in zip(got, whole, strict=False):
            assert span.operation in ("", operation)
            assert span.collection in ("", table)


@settings(max_examples=500, deadline=None)
@given(request=st.binary(max_size=200), response=st.binary(max_size=200))
def test_arbitrary_bytes_are_a_parse_error_or_facts(request: bytes, response: bytes) -> None:
    with contextlib.suppress(ParseError):
        parse_messages(request, True)
    with contextlib.suppress(ParseError):
        parse_messages(response, False)
    if looks_like_postgres(request):
        with contextlib.suppress(ParseError):
            spans_of(request, response)


def test_detection() -> None:
    assert looks_like_postgres(BY_NAME["startup"]["request"])
    assert looks_like_postgres(BY_NAME["ssl-request"]["request"])
    assert looks_like_postgres(b"Q\0\0\0\x0dSELECT 1\0")
    assert looks_like_postgres(b"p\0\0\0\x12SCRAM-SHA-256\0")  # authentication: no span, not unknown
    assert not looks_like_postgres(b"ping\r\n")
    assert not looks_like_postgres(b"POST / HTTP/1.1\r\n")
    assert not looks_like_postgres(b"*1\r\n$4\r\nPING\r\n")
    assert not looks_like_postgres(b"get k\r\n")
    assert not looks_like_postgres(b"\x09\0\0\0\x03select 1")  # MySQL's COM_QUERY
