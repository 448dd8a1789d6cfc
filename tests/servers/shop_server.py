"""A small web service with a cache and a database: what obi's users run.

Usage: shop_server.py PORT REDIS_PORT POSTGRES_PORT PASSWORD   (prints "ready" when listening)

  GET /user/<id>   the user's name: from Redis when cached, else from PostgreSQL (then cached)
  GET /boom        a query on a table that does not exist: 500

Thread per request; Redis connections come from redis-py's pool, PostgreSQL's one connection
is shared under a lock; both are opened by the first request that needs them.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.servers.threaded import serve_http

PORT, REDIS_PORT, PG_PORT, PASSWORD = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
CACHE = redis.Redis(host="127.0.0.1", port=REDIS_PORT, protocol=2)
LOCK = threading.Lock()
DATABASE: list[psycopg.Connection[tuple[object, ...]]] = []


def query(statement: str, *args: object) -> tuple[object, ...] | None:
    with LOCK:
        if not DATABASE:
            DATABASE.append(psycopg.connect(f"host=127.0.0.1 port={PG_PORT} dbname=shop user=obi "
                                            f"password={PASSWORD} sslmode=disable", autocommit=True))
        return DATABASE[0].execute(statement, args).fetchone()


def answer(path: str) -> tuple[int, bytes]:
    if path.startswith("/user/"):
        key = f"user:{path.rsplit('/', 1)[1]}"
        cached = CACHE.get(key)
        if cached is not None:
            return 200, cached if isinstance(cached, bytes) else str(cached).encode()
        row = query("SELECT name FROM users WHERE id = %s", int(key[5:]))
        body = str(row[0] if row else "").encode()
        CACHE.set(key, body, ex=60)
        return 200, body
    if path == "/boom":
        try:
            query("SELECT * FROM nosuch")
        except psycopg.errors.UndefinedTable:
            return 500, b"boom"
        return 200, b""
    return 404, b""


serve_http(PORT, answer)
