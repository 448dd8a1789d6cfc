"""The MySQL/MariaDB protocol against real conversations recorded from MariaDB 10.11
(corpus/mysql.jsonl, made by tools/record_mysql_corpus.py with PyMySQL and
mysql-connector-python), their every truncation, and arbitrary bytes."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obi.ebpf._libbpf import lib
from obi.protocols.base import IdGenerator, SpanStats
from obi.protocols.errors import ParseError
from obi.protocols.mysql import MySql, looks_like_mysql, parse_packets
from obi.traces.model import DbSpan
from tests.protocols.recorded import CORPUS_DIR
from tests.protocols.test_redis_spans import CONNECTION, exchange

CORPUS = [json.loads(line) for line in (CORPUS_DIR / "mysql.jsonl").read_text().splitlines()]
for _case in CORPUS:
    _case["exchanges"] = [(base64.b64decode(q), base64.b64decode(r)) for q, r in _case["exchanges"]]
BY_NAME = {c["name"]: c for c in CORPUS}


def conversation(case: dict[str, Any], mysql: MySql | None = None, **kw: Any) -> list[DbSpan]:
    """Every exchange of a recorded conversation through one module (one connection)."""
    mysql = mysql or MySql(IdGenerator(1))
    spans: list[DbSpan] = []
    for request, response in case["exchanges"]:
        ex = exchange(request, response, **kw)
        assert mysql.detect(ex), request[:20]
        spans += mysql.spans(mysql.parse(ex), ex, CONNECTION)
    return spans


@pytest.mark.parametrize("case", CORPUS, ids=[c["name"] for c in CORPUS])
def test_recorded_conversations_give_a_span_per_statement(case: dict[str, Any]) -> None:
    assert [s.operation for s in conversation(case)] == case["commands"]


def test_names_errors_namespaces_and_prepared_statements() -> None:
    def outcome(name: str) -> list[tuple[str, str, str]]:
        return [(s.name, s.error_type, s.namespace) for s in conversation(BY_NAME[name])]

    assert outcome("queries")[1:] == [("SELECT users", "", "shop"), ("INSERT users", "", "shop"),
                                      ("UPDATE users", "", "shop"), ("DELETE users", "", "shop")]
    assert outcome("errors")[1:] == [("SELECT nosuch", "1146", "shop"), ("INSERT users", "1062", "shop")]
    assert outcome("use-database")[1:] == [("SELECT events", "", "audit"), ("USE", "", "shop"),
                                           ("SELECT users", "", "shop")]
    # executed by statement id, named by the text prepared before
    assert outcome("prepared")[2:] == [("SELECT users", "", "shop"), ("SELECT users", "", "shop"),
                                   ("INSERT users", "1062", "shop")]
    failed = conversation(BY_NAME["errors"])[1]
    assert failed.status_code == "1146" and failed.is_error


def test_truncated_query_unanswered_and_query_text() -> None:
    stats = SpanStats()
    mysql = MySql(IdGenerator(1), stats, query_text=True)
    handshake, _, (big, answer), _ = BY_NAME["big-query"]["exchanges"]
    ex = exchange(handshake[0], handshake[1])
    mysql.spans(mysql.parse(ex), ex, CONNECTION)
    cut = exchange(big[:4096], answer[:512], request_len=len(big), response_len=len(answer))
    (span,) = mysql.spans(mysql.parse(cut), cut, CONNECTION)
    assert (span.name, span.namespace, stats.requests_truncated) == ("SELECT", "shop", 1)
    assert span.query_text == "SELECT"  # up to the last whole word: the literal is cut
    request = BY_NAME["queries"]["exchanges"][2][0]
    closed = exchange(request, b"", end=lib.OBI_END_CLOSE)
    (span,) = mysql.spans(mysql.parse(closed), closed, CONNECTION)
    assert (span.name, span.error_type, stats.unanswered) == ("SELECT users", "connection_closed", 1)


@settings(max_examples=300, deadline=None)
@given(case=st.sampled_from(CORPUS), data=st.data())
def test_every_truncation_gives_a_consistent_prefix(case: dict[str, Any], data: st.DataObject) -> None:
    """Each exchange cut anywhere: never a span the whole one does not have, never a table
    named by a cut word."""
    whole_module, cut_module = MySql(IdGenerator(1)), MySql(IdGenerator(1))
    for request, response in case["exchanges"]:
        ex = exchange(request, response)
        whole = [(s.operation, s.collection)
                 for s in whole_module.spans(whole_module.parse(ex), ex, CONNECTION)]
        cut = exchange(request[:data.draw(st.integers(5, len(request)))],
                       response[:data.draw(st.integers(0, len(response)))],
                       request_len=len(request), response_len=len(response))
        with contextlib.suppress(ParseError):
            if not cut_module.detect(cut):
                continue
            got = cut_module.spans(cut_module.parse(cut), cut, CONNECTION)
            assert len(got) <= len(whole)
            for span, (operation, table) in zip(got, whole, strict=False):
                assert span.operation in ("", operation)
                assert span.collection in ("", table)


@settings(max_examples=500, deadline=None)
@given(request=st.binary(max_size=200), response=st.binary(max_size=200))
def test_arbitrary_bytes_are_a_parse_error_or_facts(request: bytes, response: bytes) -> None:
    parse_packets(request)
    parse_packets(response)
    if looks_like_mysql(request, len(request)):
        mysql = MySql(IdGenerator(1))
        ex = exchange(request, response)
        with contextlib.suppress(ParseError):
            mysql.spans(mysql.parse(ex), ex, CONNECTION)


def test_detection() -> None:
    def looks(request: bytes) -> bool:
        return looks_like_mysql(request, len(request))

    assert looks(b"\x09\0\0\0\x03select 1")
    assert looks(BY_NAME["queries"]["exchanges"][0][0])  # the handshake response
    assert not looks(b"Q\0\0\0\x0dSELECT 1\0")  # PostgreSQL
    assert not looks(b"GET / HTTP/1.1\r\n")
    assert not looks(b"\x09\0\0\0\x03sel\x01\x02ct 1")
    assert not looks(b"\x09\0\0\0\x03select 1 and more")  # the packet ends before the bytes do
    assert looks_like_mysql(b"\xff\x00\x00\x00\x03SELECT", 300)  # cut by the capture
