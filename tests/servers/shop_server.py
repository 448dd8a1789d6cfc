"""A small web service with a cache and a database: what obi's users run.

Usage: shop_server.py PORT REDIS_PORT POSTGRES_PORT PASSWORD   (prints "ready" when listening)

  GET /user/<id>   the user's name: from Redis when cached, else from PostgreSQL (then cached)
  GET /boom        a query on a table that does not exist: 500

Thread per request; Redis connections come from redis-py's pool, PostgreSQL's one connection
is shared under a lock; both are opened by the first request that needs them.
"""

from __future__ import annotations

import http.server
import sys
import threading

import psycopg
import redis

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


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        status, body = 200, b""
        if self.path.startswith("/user/"):
            key = f"user:{self.path.rsplit('/', 1)[1]}"
            cached = CACHE.get(key)
            if cached is None:
                row = query("SELECT name FROM users WHERE id = %s", int(key[5:]))
                body = str(row[0] if row else "").encode()
                CACHE.set(key, body, ex=60)
            else:
                body = cached if isinstance(cached, bytes) else str(cached).encode()
        elif self.path == "/boom":
            try:
                query("SELECT * FROM nosuch")
            except psycopg.errors.UndefinedTable:
                status, body = 500, b"boom"
        else:
            status = 404
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print("ready", flush=True)
server.serve_forever()
