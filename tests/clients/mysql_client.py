"""A MySQL/MariaDB client for the end-to-end tests: says "ready", waits for "go" on stdin,
runs its statements on one connection, prints each result, says "done", then idles.

argv: api(pymysql|connector) port password. pymysql sends COM_QUERY; mysql-connector-python
with prepared=True sends COM_STMT_PREPARE once and COM_STMT_EXECUTE by statement id."""

from __future__ import annotations

import sys
from typing import Any

api, port, password = sys.argv[1], int(sys.argv[2]), sys.argv[3]
print("ready", flush=True)
sys.stdin.readline()
conn: Any
if api == "pymysql":
    import pymysql

    conn = pymysql.connect(host="127.0.0.1", port=port, user="obi", password=password, database="shop",
                           autocommit=True)
    cur = conn.cursor()
    errors: tuple[type[Exception], ...] = (pymysql.err.ProgrammingError, pymysql.err.IntegrityError)
else:
    import mysql.connector

    conn = mysql.connector.connect(host="127.0.0.1", port=port, user="obi", password=password,
                                   database="shop", autocommit=True)
    cur = conn.cursor(prepared=True)
    errors = (mysql.connector.errors.ProgrammingError, mysql.connector.errors.IntegrityError)
for _ in range(2):
    cur.execute("SELECT name FROM users WHERE id = %s", (1,))
    print(cur.fetchall(), flush=True)
failing = (("SELECT * FROM nosuch WHERE id = %s", (1,)), ("INSERT INTO users VALUES (%s, %s)", (1, "x")))
for statement, args in failing:
    try:
        cur.execute(statement, args)
    except errors as err:
        print("error", err.args[0], flush=True)
conn.close()
print("done", flush=True)
sys.stdin.read()
