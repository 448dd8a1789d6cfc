"""A pipelining Redis client that writes its commands one by one before it reads (as
redis-py 8's connection handshake does), with a pause between the writes so that the server
reads them apart. Says "ready", waits for "go" on stdin, prints both replies, says "done",
then idles.

argv: port"""

from __future__ import annotations

import socket
import sys
import time


def command(*words: str) -> bytes:
    return f"*{len(words)}\r\n".encode() + b"".join(f"${len(w)}\r\n{w}\r\n".encode() for w in words)


port = int(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
with socket.create_connection(("127.0.0.1", port)) as sock:
    sock.sendall(command("SET", "apart", "1"))
    time.sleep(0.2)  # the server has read and answered the SET by now
    sock.sendall(command("GET", "apart"))
    replies = b""
    while replies.count(b"\r\n") < 3:  # "+OK", "$1", "1"
        chunk = sock.recv(4096)
        if not chunk:
            break
        replies += chunk
    print(replies, flush=True)
    print("done", flush=True)
    sys.stdin.read()
