"""Records real Redis exchanges into tests/protocols/corpus/redis.jsonl.

Starts Debian's redis-server on a free loopback port (no persistence, in a temporary
directory), sends each case's request bytes on a fresh connection as one write, and keeps
what the server answered (read until it is quiet for 200 ms). One JSON line per case:
name, the commands it holds (upper-case names, in order), request and response (base64).

Usage: python tools/record_redis_corpus.py   (needs redis-server; rewrites the corpus)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile

from corpus_recording import exchange, free_port, wait_for_port, write_corpus


def command(*args: str | bytes) -> bytes:
    parts = [a.encode() if isinstance(a, str) else a for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def cases() -> list[tuple[str, list[str], bytes]]:
    big = [f"key:{i}" for i in range(1000)]
    return [
        ("ping", ["PING"], command("PING")),
        ("inline-ping", ["PING"], b"PING\r\n"),
        ("set-get", ["SET", "GET"], command("SET", "user:1", "alice") + command("GET", "user:1")),
        ("get-missing", ["GET"], command("GET", "nothing:here")),
        ("incr", ["INCR", "INCRBY"], command("INCR", "counter") + command("INCRBY", "counter", "41")),
        ("error-wrongtype", ["SET", "LPUSH"], command("SET", "str", "v") + command("LPUSH", "str", "x")),
        ("error-unknown", ["NOSUCHCOMMAND"], command("NOSUCHCOMMAND", "a")),
        ("hash", ["HSET", "HGETALL"],
         command("HSET", "h", "f1", "v1", "f2", "v2") + command("HGETALL", "h")),
        ("list", ["RPUSH", "LRANGE"],
         command("RPUSH", "l", "a", "b", "c") + command("LRANGE", "l", "0", "-1")),
        ("select", ["SELECT", "SET"], command("SELECT", "3") + command("SET", "in-db-3", "x")),
        ("multi-exec", ["MULTI", "SET", "INCR", "EXEC"],
         command("MULTI") + command("SET", "m", "1") + command("INCR", "m") + command("EXEC")),
        ("pipeline-20", ["SET"] * 20, b"".join(command("SET", f"p:{i}", str(i)) for i in range(20))),
        ("mget-1000", ["MSET", "MGET"],
         command("MSET", *[x for k in big for x in (k, "v")]) + command("MGET", *big)),
        ("big-value", ["SET", "GET"], command("SET", "big", b"x" * 20000) + command("GET", "big")),
        ("resp3-hello", ["HELLO", "HGETALL", "SMEMBERS", "GET", "INCRBYFLOAT"],
         command("HELLO", "3") + command("HGETALL", "h")
         + command("SMEMBERS", "s") + command("GET", "nothing") + command("INCRBYFLOAT", "f", "1.5")),
        ("del-exists", ["DEL", "EXISTS"], command("DEL", "user:1") + command("EXISTS", "user:1")),
    ]


def main() -> int:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
        try:
            wait_for_port(port)
            exchange(port, command("SADD", "s", "a", "b"))
            write_corpus("redis", port, cases())
        finally:
            server.terminate()
            server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
