"""A redis-py client for the end-to-end tests: says "ready", waits for "go" on stdin, runs its
commands on one connection (RESP2 or RESP3), prints each result, says "done", then idles.

argv: port db protocol(2|3)"""

from __future__ import annotations

import sys

import redis

port, db, protocol = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()
# connected at the first command, after "go": obi sees the connection from its start
client = redis.Redis(host="127.0.0.1", port=port, db=db, protocol=protocol)
client.set("user:1", "alice")
print(client.get("user:1"), flush=True)
pipe = client.pipeline(transaction=False)
pipe.set("counter", 41)
pipe.incr("counter")
pipe.lpush("counter", "x")  # WRONGTYPE
print(pipe.execute(raise_on_error=False), flush=True)
try:
    client.execute_command("NOSUCHCMD", "arg")  # type: ignore[no-untyped-call]
except redis.ResponseError as err:
    print("error", err, flush=True)
print(len(client.mget([f"key:{i:04d}" for i in range(1000)])), flush=True)  # past the capture
print("done", flush=True)
sys.stdin.read()
