"""A pymemcache client for the end-to-end tests: says "ready", waits for "go" on stdin, runs
its commands on one connection, prints each result, says "done", then idles.

argv: port"""

from __future__ import annotations

import sys

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheClientError, MemcacheServerError

port = int(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
client = Client(("127.0.0.1", port))  # connects at the first command, after "go"
print(client.set("user:1", "alice", noreply=False), flush=True)
print(client.get("user:1"), flush=True)
print(client.get_many(["user:1", "user:2"]), flush=True)
client.set("text", "x")  # noreply, pymemcache's default
try:
    client.incr("text", 1)
except MemcacheClientError as err:
    print("client error", err, flush=True)
try:
    client.set("huge", b"h" * (2 * 1024 * 1024), noreply=False)
except MemcacheServerError as err:
    print("server error", err, flush=True)
print(client.delete("user:1", noreply=False), flush=True)
print("done", flush=True)
sys.stdin.read()
