"""Records real MariaDB conversations into tests/protocols/corpus/mysql.jsonl.

Starts a throwaway MariaDB (tests/servers/mariadb.py) and a relay in front of it that
keeps every byte each side sent; each scenario runs PyMySQL through the relay on one
connection (mysql-connector-python for server-side prepared statements). Its bytes are cut into exchanges where the direction turns (the server's
greeting, which nothing asked for, is left out). One JSON line per scenario: name, the
operations of its spans in order, and its exchanges (request, response; base64).

Usage: python tools/record_mysql_corpus.py   (needs mariadb-server; rewrites the corpus)
"""

from __future__ import annotations

import base64
import json
import select
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

from corpus_recording import CORPUS_DIR, ROOT

sys.path.insert(0, str(ROOT))
import mysql.connector  # noqa: E402
import pymysql  # noqa: E402

from tests.servers.mariadb import PASSWORD, start_mariadb  # noqa: E402


def relay(listener: socket.socket, upstream: int, chunks: list[tuple[bool, bytes]]) -> None:
    """One connection through: (from the client?, bytes) in order."""
    client, _ = listener.accept()
    server = socket.create_connection(("127.0.0.1", upstream))
    ends = {client: server, server: client}
    while ends:
        ready, _, _ = select.select(list(ends), [], [], 5)
        if not ready:
            break
        for sock in ready:
            data = sock.recv(65536)
            if not data:
                ends.clear()
                break
            ends[sock].sendall(data)
            chunks.append((sock is client, data))
    client.close()
    server.close()


def exchanges(chunks: list[tuple[bool, bytes]]) -> list[tuple[bytes, bytes]]:
    pairs: list[tuple[bytes, bytes]] = []
    for from_client, data in chunks:
        if from_client:
            if pairs and not pairs[-1][1]:
                pairs[-1] = (pairs[-1][0] + data, b"")
            else:
                pairs.append((data, b""))
        elif pairs:
            pairs[-1] = (pairs[-1][0], pairs[-1][1] + data)
    return pairs


def scenarios() -> list[tuple[str, list[str], Callable[[Any], None]]]:
    def queries(conn: Any) -> None:
        with conn.cursor() as cur:
            cur.execute("SELECT name FROM users WHERE id = %s", (1,))
            cur.execute("INSERT INTO users VALUES (3, 'carol')")
            cur.execute("UPDATE users SET name = 'bob2' WHERE id = 2")
            cur.execute("DELETE FROM users WHERE id = 3")

    def error(conn: Any) -> None:
        with conn.cursor() as cur:
            try:
                cur.execute("SELECT * FROM nosuch")
            except pymysql.err.ProgrammingError:
                pass
            try:
                cur.execute("INSERT INTO users VALUES (1, 'dup')")
            except pymysql.err.IntegrityError:
                pass

    def use(conn: Any) -> None:
        conn.select_db("audit")
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM events")
            cur.execute("USE shop")
            cur.execute("SELECT COUNT(*) FROM users")

    def prepared(conn: Any) -> None:  # a mysql.connector connection: COM_STMT_PREPARE / EXECUTE
        cur = conn.cursor(prepared=True)
        cur.execute("SELECT name FROM users WHERE id = %s", (1,))
        cur.fetchall()
        cur.execute("SELECT name FROM users WHERE id = %s", (2,))
        cur.fetchall()
        try:
            cur.execute("INSERT INTO users VALUES (%s, %s)", (1, "dup"))
        except mysql.connector.errors.IntegrityError:
            pass

    def big(conn: Any) -> None:
        with conn.cursor() as cur:
            cur.execute("SELECT %s AS big FROM users WHERE id = 1", ("x" * 10000,))

    return [
        ("prepared", ["SET", "SET", "SELECT", "SELECT", "INSERT"], prepared),
        ("queries", ["SET", "SELECT", "INSERT", "UPDATE", "DELETE"], queries),
        ("errors", ["SET", "SELECT", "INSERT"], error),
        ("use-database", ["SET", "SELECT", "USE", "SELECT"], use),
        ("big-query", ["SET", "SELECT"], big),
    ]


def main() -> int:
    server = start_mariadb()
    lines = []
    try:
        for name, operations, run in scenarios():
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            chunks: list[tuple[bool, bytes]] = []
            thread = threading.Thread(target=relay, args=(listener, server.port, chunks))
            thread.start()
            connect = mysql.connector.connect if name == "prepared" else pymysql.connect
            conn = connect(host="127.0.0.1", port=listener.getsockname()[1], user="obi", password=PASSWORD,
                           database="shop", autocommit=True)
            run(conn)
            conn.close()
            thread.join(10)
            listener.close()
            lines.append(json.dumps({"name": name, "commands": operations, "exchanges": [
                [base64.b64encode(q).decode(), base64.b64encode(r).decode()] for q, r in exchanges(chunks)]}))
    finally:
        server.stop()
    path = CORPUS_DIR / "mysql.jsonl"
    path.write_text("\n".join(lines) + "\n")
    print(f"{len(lines)} conversations written to {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
