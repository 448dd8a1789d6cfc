"""An HTTP/1.1 keep-alive server that reads requests in tiny pieces and writes
each response in several writes, with the syscalls the kernel side hooks:
read/recv/recvfrom/recvmsg/readv for input, write/send/sendmsg/writev for output.

Usage: split_server.py PORT [HOST]   (prints "ready" when listening; HOST ::1 for IPv6)
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.servers.threaded import serve_forever


def read_request(conn: socket.socket, step: int, turn: int) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        # Rotate through the read syscalls, `step` bytes at a time.
        kind = (turn + len(data)) % 4
        if kind == 0:
            chunk = os.read(conn.fileno(), step)
        elif kind == 1:
            chunk = conn.recv(step)
        elif kind == 2:
            chunk = conn.recvmsg(step)[0]
        else:
            buf = bytearray(step)
            n = os.readv(conn.fileno(), [buf])
            chunk = bytes(buf[:n])
        if not chunk:
            return None
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = conn.recv(length - len(rest))
        if not chunk:
            return None
        rest += chunk
    return head


def respond(conn: socket.socket, status: str, body: bytes) -> None:
    head = f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    os.write(conn.fileno(), head[:9])          # "HTTP/1.1 "
    conn.send(head[9:])                          # rest of the status line and headers
    half = len(body) // 2
    conn.sendmsg([body[:half]])
    os.writev(conn.fileno(), [body[half:]])


def serve(conn: socket.socket) -> None:
    turn = 0
    with conn:
        while True:
            head = read_request(conn, step=7, turn=turn)
            if head is None:
                return
            path = head.split(b" ")[1]
            if path.startswith(b"/fail"):
                respond(conn, "500 Internal Server Error", b"boom\n")
            else:
                respond(conn, "200 OK", b"x" * 100 + b"\n")
            turn += 1


def main() -> None:
    serve_forever(serve)

if __name__ == "__main__":
    main()
