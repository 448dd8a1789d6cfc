"""An HTTP/1.1 server on raw sockets whose every path is one behaviour real servers have.

Usage: behaviour_server.py PORT [HOST]   (prints "ready" when listening)

Keep-alive, and pipelining: requests are parsed from a buffer, so several in
one read are answered in order. One thread per connection.

  /plain[...]        200, Content-Length body "ok\\n"
  /status/NNN        status NNN, Content-Length body
  /chunked?n=K&gap=MS  chunked body of K chunks, MS milliseconds apart (SSE-like)
  /continue          honours "Expect: 100-continue": interim 100, then reads the body, then 200
  /bigheaders        200 with 3 KiB of Set-Cookie headers before Content-Length
  /close             HTTP/1.0 response without Content-Length, delimited by closing
  /hang              never answers (the connection stays open)
  /die               the process exits at once, the request unanswered
  /echo              200 whose body is the request body
  /headers           200 whose body lists the request's header names, one per line
  /traceparent[...]  200 whose body is every traceparent header the request had, one per line
                     ("none" without one), then "body LENGTH SHA256" when it had a body
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.servers.threaded import serve_forever


def respond(conn: socket.socket, status: int, body: bytes, extra: bytes = b"") -> None:
    reason = {200: b"OK", 404: b"Not Found", 500: b"Internal Server Error"}.get(status, b"Status")
    head = b"HTTP/1.1 %d %s\r\n%sContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % (
        status, reason, extra, len(body))
    conn.sendall(head + body)


def serve(conn: socket.socket) -> None:
    buf = b""
    with conn:
        while True:
            while b"\r\n\r\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            method, target, _ = lines[0].split(b" ", 2)
            headers = {}
            traceparents = []
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
                if name.strip().lower() == b"traceparent":
                    traceparents.append(value.strip())
            length = int(headers.get(b"content-length", b"0"))
            url = urlsplit(target.decode())
            path, query = url.path, parse_qs(url.query)
            if path == "/continue" and headers.get(b"expect", b"").lower() == b"100-continue":
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            while len(buf) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
            body, buf = buf[:length], buf[length:]
            if path.startswith("/status/"):
                respond(conn, int(path.rsplit("/", 1)[1]), b"status\n")
            elif path == "/chunked":
                count, gap = int(query.get("n", ["3"])[0]), int(query.get("gap", ["0"])[0]) / 1000
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
                for i in range(count):
                    if gap:
                        time.sleep(gap)
                    data = b"data: %d\n\n" % i
                    conn.sendall(b"%x\r\n%s\r\n" % (len(data), data))
                conn.sendall(b"0\r\n\r\n")
            elif path == "/bigheaders":
                cookies = b"".join(b"Set-Cookie: c%02d=%s\r\n" % (i, b"v" * 90) for i in range(30))
                respond(conn, 200, b"big\n", cookies)
            elif path == "/close":
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nclosed body\n")
                return
            elif path == "/hang":
                while conn.recv(65536):
                    pass
                return
            elif path == "/die":
                os._exit(3)
            elif path == "/echo":
                respond(conn, 200, body)
            elif path.startswith("/traceparent"):
                seen = b"".join(v + b"\n" for v in traceparents) or b"none\n"
                if body:
                    seen += b"body %d %s\n" % (len(body), hashlib.sha256(body).hexdigest().encode())
                respond(conn, 200, seen)
            elif path == "/headers":
                respond(conn, 200, b"".join(name + b"\n" for name in headers))
            elif method == b"HEAD":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
            else:
                respond(conn, 200, b"ok\n")


def main() -> None:
    serve_forever(serve)

if __name__ == "__main__":
    main()
