"""A psycopg 3 client for the end-to-end tests: says "ready", waits for "go" on stdin, runs
its statements on one connection (extended protocol, a statement prepared and reused, an
error), prints each result, says "done", then idles.

argv: port sslmode(disable|require) password"""

from __future__ import annotations

import sys

import psycopg

port, sslmode, password = sys.argv[1], sys.argv[2], sys.argv[3]
print("ready", flush=True)
sys.stdin.readline()
dsn = f"host=127.0.0.1 port={port} dbname=shop user=obi password={password} sslmode={sslmode}"
with psycopg.connect(dsn) as conn:  # connected after "go": obi sees its startup
    print(conn.execute("SELECT name FROM users WHERE id = %s", (1,)).fetchall(), flush=True)
    for _ in range(3):  # prepared once, then executed by name
        conn.execute("SELECT name FROM users WHERE id = %s", (2,), prepare=True).fetchall()
    try:
        conn.execute("SELECT * FROM nosuch")
    except psycopg.errors.UndefinedTable as err:
        print("error", err.sqlstate, flush=True)
print("done", flush=True)
sys.stdin.read()
