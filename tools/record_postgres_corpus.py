"""Records real PostgreSQL exchanges into tests/protocols/corpus/postgresql.jsonl.

Starts a throwaway cluster (tests/servers/postgres.py: the machine's PostgreSQL, database
`shop` with a table `users`), sends each case's frontend messages on a fresh connection as
one write (the startup message first: trust authentication answers at once), and keeps
what the server answered. The commands of each case are the operations of its spans.

Usage: python tools/record_postgres_corpus.py   (needs PostgreSQL; rewrites the corpus)
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

from corpus_recording import write_corpus

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.servers.postgres import start_postgres  # noqa: E402


def message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def startup(**parameters: str) -> bytes:
    body = struct.pack("!I", 196608) + b"".join(k.encode() + b"\0" + v.encode() + b"\0"
                                                 for k, v in parameters.items()) + b"\0"
    return struct.pack("!I", len(body) + 4) + body


def query(text: str) -> bytes:
    return message(b"Q", text.encode() + b"\0")


def parse(name: str, text: str) -> bytes:
    return message(b"P", name.encode() + b"\0" + text.encode() + b"\0" + struct.pack("!H", 0))


def bind(portal: str, statement: str, *params: bytes) -> bytes:
    body = portal.encode() + b"\0" + statement.encode() + b"\0" + struct.pack("!HH", 0, len(params))
    body += b"".join(struct.pack("!I", len(p)) + p for p in params) + struct.pack("!H", 0)
    return message(b"B", body)


def describe(portal: str) -> bytes:
    return message(b"D", b"P" + portal.encode() + b"\0")


def execute(portal: str = "") -> bytes:
    return message(b"E", portal.encode() + b"\0" + struct.pack("!I", 0))


SYNC = message(b"S", b"")


def cases() -> list[tuple[str, list[str], bytes]]:
    hello = startup(user="postgres", database="shop")
    select = "SELECT name FROM users WHERE id = $1"
    return [
        ("startup", [], hello),
        ("simple-select", ["SELECT"], hello + query("SELECT * FROM users")),
        ("simple-error", ["SELECT"], hello + query("SELECT * FROM nosuch")),
        ("multi-statement", ["BEGIN"], hello + query("BEGIN; UPDATE users SET name = 'x' WHERE id = 3; COMMIT")),
        ("empty-query", [""], hello + query("")),
        ("extended", ["SELECT"], hello + parse("", select) + bind("", "", b"1") + describe("") + execute() + SYNC),
        ("prepared-reuse", ["SELECT", "SELECT"],
         hello + parse("s1", select) + SYNC + bind("", "s1", b"1") + execute() + SYNC
         + bind("", "s1", b"2") + execute() + SYNC),
        ("extended-error", ["INSERT"],
         hello + parse("", "INSERT INTO users VALUES ($1, $2)") + bind("", "", b"1", b"dup") + execute() + SYNC),
        ("parse-error", ["SELEC"], hello + parse("", "SELEC 1") + SYNC),
        ("two-in-a-cycle", ["SELECT", "DELETE"],
         hello + parse("", "SELECT 1 FROM users") + bind("", "") + execute() + parse("", "DELETE FROM nosuch")
         + bind("", "") + execute() + SYNC),
        ("big-bind", ["INSERT"],
         hello + parse("", "INSERT INTO users VALUES (10, $1)") + bind("", "", b"n" * 10000) + execute() + SYNC),
        ("ssl-request", [], struct.pack("!II", 8, 80877103)),
    ]


def main() -> int:
    server = start_postgres()
    try:
        write_corpus("postgresql", server.port, cases())
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
