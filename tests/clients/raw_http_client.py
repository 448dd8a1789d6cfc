"""An HTTP/1.1 client on raw sockets that writes requests the way real clients can.

Usage: raw_http_client.py LISTEN_PORT TARGET_PORT   (prints "ready")

It listens on LISTEN_PORT only so that obi selects it by its open port. For each line
read on stdin (a case name below) it opens a connection to 127.0.0.1:TARGET_PORT,
sends the requests of that case, and prints one JSON line: the response bodies.

  plain       GET /traceparent/plain in one write
  own         GET with the application's own traceparent header
  long-line   GET whose request line is 3 KiB (a long query)
  big-body    POST of 256 KiB in one write (many TCP segments)
  split       the request line, then the headers, then the body: three writes 50 ms apart
  keep-alive  two GETs on one connection, one after the other
"""

from __future__ import annotations

import json
import socket
import sys
import time

OWN = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def read_response(sock: socket.socket, buf: bytearray) -> str:
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response")
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside a response")
        rest += chunk
    buf[:] = rest[length:]
    return rest[:length].decode()


def request(path: str, headers: str = "", body: bytes = b"", method: str = "GET") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


def run(case: str, port: int) -> list[str]:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        buf = bytearray()
        if case == "plain":
            sock.sendall(request("/traceparent/plain"))
        elif case == "own":
            sock.sendall(request("/traceparent/own", f"traceparent: {OWN}\r\n"))
        elif case == "long-line":
            sock.sendall(request("/traceparent/long?q=" + "x" * 3072))
        elif case == "big-body":
            sock.sendall(request("/traceparent/big", body=bytes(range(256)) * 1024, method="POST"))
        elif case == "split":
            body = b"split body\n"
            sock.sendall(b"POST /traceparent/split HTTP/1.1\r\n")
            time.sleep(0.05)
            sock.sendall(f"Host: 127.0.0.1\r\nContent-Length: {len(body)}\r\n\r\n".encode())
            time.sleep(0.05)
            sock.sendall(body)
        elif case == "keep-alive":
            sock.sendall(request("/traceparent/first"))
            first = read_response(sock, buf)
            sock.sendall(request("/traceparent/second"))
            return [first, read_response(sock, buf)]
        else:
            raise ValueError(case)
        return [read_response(sock, buf)]


def main() -> None:
    listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
    print("ready", flush=True)
    for line in sys.stdin:
        print(json.dumps(run(line.strip(), int(sys.argv[2]))), flush=True)
    listener.close()


if __name__ == "__main__":
    main()
