"""A pipelining Redis client that writes its commands one by one before it reads (as
redis-py 8's connection handshake does), with a pause between the writes so that the server
reads them apart: SET, then GETs. Says "ready", waits for "go" on stdin, prints the replies,
says "done", then idles.

argv: port commands"""

from __future__ import annotations

import socket
import sys
import time


def command(*words: str) -> bytes:
    return f"*{len(words)}\r\n".encode() + b"".join(f"${len(w)}\r\n{w}\r\n".encode() for w in words)


port, commands = int(sys.argv[1]), int(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
with socket.create_connection(("127.0.0.1", port)) as sock:
    sock.sendall(command("SET", "apart", "1"))
    for _ in range(commands - 1):
        time.sleep(0.1)  # the server has read and answered the command before by now
        sock.sendall(command("GET", "apart"))
    replies = b""
    while replies.count(b"\r\n") < 1 + 2 * (commands - 1):  # "+OK", then "$1", "1" for each GET
        chunk = sock.recv(4096)
        if not chunk:
            break
        replies += chunk
    print(replies, flush=True)
    print("done", flush=True)
    sys.stdin.read()
