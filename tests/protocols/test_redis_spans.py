"""Redis spans from exchanges: pipelines, replies owed across exchanges, SELECT's database,
kernel ids, and what is counted instead of guessed."""

from __future__ import annotations

from obi.ebpf._libbpf import lib
from obi.protocols.base import (
    ROLE_CLIENT,
    ROLE_SERVER,
    Connection,
    Exchange,
    IdGenerator,
    SpanStats,
    nth_span_id,
)
from obi.protocols.redis import Redis
from obi.traces.model import SPAN_KIND_CLIENT, SPAN_KIND_SERVER, DbSpan, ServiceIdentity

SERVICE = ServiceIdentity(pid=77, exe_path="/usr/bin/app", service_name="app")
CONNECTION = Connection(SERVICE, 1_000, 2_000, "10.0.0.1", 40000, "10.0.0.2", 6379)
TRACE, SPAN, PARENT = b"\x11" * 16, b"\x22" * 8, b"\x33" * 8


def command(*words: str) -> bytes:
    return f"*{len(words)}\r\n".encode() + b"".join(f"${len(w)}\r\n{w}\r\n".encode() for w in words)


def exchange(request: bytes, response: bytes, role: int = ROLE_CLIENT, request_len: int | None = None,
             response_len: int | None = None, end: int = lib.OBI_END_NEXT_REQUEST, ids: bytes = b"",
             midway: bool = False) -> Exchange:
    return Exchange(role, request, response, len(request) if request_len is None else request_len,
                    len(response) if response_len is None else response_len, -1, -1, False, False, end, False,
                    ids, midway)


def spans_of(redis: Redis, ex: Exchange, connection: Connection = CONNECTION) -> list[DbSpan]:
    assert redis.detect(ex)
    return redis.spans(redis.parse(ex), ex, connection)


def test_pipeline_one_span_per_command_with_the_kernels_ids() -> None:
    redis = Redis(IdGenerator(1))
    request = command("SET", "a", "1") + command("INCR", "a") + command("LPUSH", "a", "x")
    response = b"+OK\r\n:2\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
    spans = spans_of(redis, exchange(request, response, ids=TRACE + SPAN + PARENT))
    assert [(s.operation, s.error_type, s.status_code, s.namespace, s.kind) for s in spans] == [
        ("SET", "", "", "0", SPAN_KIND_CLIENT), ("INCR", "", "", "0", SPAN_KIND_CLIENT),
        ("LPUSH", "WRONGTYPE", "WRONGTYPE", "0", SPAN_KIND_CLIENT)]
    assert [s.span_id for s in spans] == [SPAN, nth_span_id(SPAN, 1), nth_span_id(SPAN, 2)]
    assert {(s.trace_id, s.parent_span_id) for s in spans} == {(TRACE, PARENT)}  # the caller's request
    assert (spans[0].server_address, spans[0].server_port, spans[0].client_port) == ("10.0.0.2", 6379, 40000)
    assert (spans[0].start_ns, spans[0].end_ns) == (1_000, 2_000)
    assert spans[0].query_text is None


def test_server_spans_name_the_callers_span_for_each_command() -> None:
    """The server's kernel ids have the client's first span as parent: the n-th command's
    parent is the client's n-th span, derived alike at both ends."""
    redis = Redis(IdGenerator(1))
    server = Connection(SERVICE, 1_000, 2_000, "10.0.0.2", 6379, "10.0.0.1", 40000)
    request = command("GET", "a") + command("GET", "b")
    spans = spans_of(redis, exchange(request, b"$1\r\n1\r\n$-1\r\n", role=ROLE_SERVER,
                                     ids=TRACE + b"\x44" * 8 + SPAN, end=lib.OBI_END_READ), server)
    assert [s.kind for s in spans] == [SPAN_KIND_SERVER] * 2
    assert [s.parent_span_id for s in spans] == [SPAN, nth_span_id(SPAN, 1)]
    assert (spans[0].server_address, spans[0].server_port, spans[0].client_address) == ("10.0.0.2", 6379,
                                                                                        "10.0.0.1")


def test_a_pipeline_the_server_read_apart_names_the_callers_span_for_each_command() -> None:
    """A client wrote three commands one by one before reading (redis-py's handshake); the
    server read the first alone, then the other two: each of its exchanges has the client's
    first span as parent (left under each write), and the commands are numbered across them.
    A later call (another parent) numbers from its first command again."""
    redis = Redis(IdGenerator(1))
    server = Connection(SERVICE, 1_000, 2_000, "10.0.0.2", 6379, "10.0.0.1", 40000)
    reads = [(command("CLIENT", "SETINFO", "LIB-NAME", "x"), b"+OK\r\n", SPAN),
             (command("CLIENT", "SETINFO", "LIB-VER", "1") + command("PING"), b"+OK\r\n+PONG\r\n", SPAN),
             (command("GET", "a"), b"$-1\r\n", PARENT)]  # the next call's
    parents = []
    for n, (request, response, caller) in enumerate(reads):
        ids = TRACE + bytes([0x44 + n]) * 8 + caller
        ex = exchange(request, response, role=ROLE_SERVER, ids=ids, end=lib.OBI_END_READ)
        parents += [s.parent_span_id for s in spans_of(redis, ex, server)]
    assert parents == [SPAN, nth_span_id(SPAN, 1), nth_span_id(SPAN, 2), PARENT]


def test_without_kernel_ids_each_command_is_a_trace() -> None:
    spans = spans_of(Redis(IdGenerator(1)), exchange(command("GET", "a") + command("GET", "b"),
                                                     b"$-1\r\n$-1\r\n"))
    assert len({s.trace_id for s in spans}) == 2 and all(s.parent_span_id == b"" for s in spans)


def test_replies_owed_by_an_earlier_exchange_are_not_paired_with_later_commands() -> None:
    """A client that sends again before reading every reply: the kernel ends the exchange; the
    late replies open the next one and are skipped there."""
    redis = Redis(IdGenerator(1))
    first = spans_of(redis, exchange(command("SET", "a", "1") + command("LPUSH", "a", "x"), b"+OK\r\n"))
    assert [(s.operation, s.error_type) for s in first] == [("SET", ""), ("LPUSH", "")]  # reply unseen
    second = spans_of(redis, exchange(command("GET", "a"), b"-WRONGTYPE wrong kind\r\n$1\r\n1\r\n"))
    assert [(s.operation, s.error_type) for s in second] == [("GET", "")]


def test_select_sets_the_namespace_of_later_commands_on_that_connection() -> None:
    redis = Redis(IdGenerator(1))
    other = CONNECTION._replace(local_port=40001)
    assert spans_of(redis, exchange(command("SELECT", "3"), b"+OK\r\n"))[0].namespace == "3"
    assert spans_of(redis, exchange(command("GET", "a"), b"$-1\r\n"))[0].namespace == "3"
    assert spans_of(redis, exchange(command("GET", "a"), b"$-1\r\n"), other)[0].namespace == "0"
    failed = spans_of(redis, exchange(command("SELECT", "99"), b"-ERR DB index is out of range\r\n"))
    assert (failed[0].namespace, failed[0].error_type) == ("99", "ERR")  # the target, even when refused
    assert spans_of(redis, exchange(command("GET", "a"), b"$-1\r\n"))[0].namespace == "3"
    # a connection obi joined mid-way: its database is unknown until it says
    midway = CONNECTION._replace(local_port=40002)
    assert spans_of(redis, exchange(command("GET", "a"), b"$-1\r\n", midway=True), midway)[0].namespace == ""
    # closed: forgotten, and its port may come back as a new connection
    closed = spans_of(redis, exchange(command("QUIT"), b"+OK\r\n", end=lib.OBI_END_CLOSE))
    assert closed[0].namespace == "3"
    assert spans_of(redis, exchange(command("GET", "a"), b"$-1\r\n"))[0].namespace == "0"


def test_unanswered_commands_and_truncated_or_split_requests_are_counted() -> None:
    stats = SpanStats()
    redis = Redis(IdGenerator(1), stats)
    closed = spans_of(redis, exchange(command("BLPOP", "q", "0"), b"", end=lib.OBI_END_CLOSE))
    assert (closed[0].error_type, closed[0].status_code, stats.unanswered) == ("connection_closed", "", 1)
    # MGET of 1,000 keys past a 4 KiB capture: the command is known, its arguments counted
    whole = command("MGET", *[f"key:{i:04d}" for i in range(1000)])
    cut = spans_of(redis, exchange(whole[:4096], b"*1000\r\n$-1\r\n", request_len=len(whole),
                                   response_len=7 + 5 * 1000))
    assert [s.operation for s in cut] == ["MGET"] and stats.requests_truncated == 1
    # the kernel's exchange ended inside a command it saw whole (the rest comes next): left out
    request = command("SET", "a", "1") + command("SET", "b", "2")[:9]
    split = spans_of(redis, exchange(request, b"+OK\r\n", end=lib.OBI_END_READ, role=ROLE_SERVER))
    assert [s.operation for s in split] == ["SET"] and stats.split_requests == 1


def test_query_text_only_when_asked_and_never_credentials() -> None:
    redis = Redis(IdGenerator(1), query_text=True)
    spans = spans_of(redis, exchange(command("AUTH", "admin", "hunter2") + command("SET", "k", "two words")
                                     + command("HELLO", "3", "AUTH", "admin", "hunter2"),
                                     b"+OK\r\n+OK\r\n%0\r\n"))
    assert [s.query_text for s in spans] == ["AUTH", "SET k 'two words'", "HELLO"]
    assert spans[1].attributes()["db.query.text"] == "SET k 'two words'"


def test_connection_states_are_bounded_and_forgetting_is_counted() -> None:
    stats = SpanStats()
    redis = Redis(IdGenerator(1), stats)
    redis.connections._limit = 2
    for port in (1, 2, 3):
        spans_of(redis, exchange(command("SELECT", "5"), b"+OK\r\n"), CONNECTION._replace(local_port=port))
    assert len(redis.connections) == 2 and stats.connections_forgotten == 1
