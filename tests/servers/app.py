"""The instrumented application of the end-to-end tests: Python's http.server,
HTTP/1.1 keep-alive, a few routes with known answers.

Usage: app.py PORT   (prints "ready" when listening)
  GET  /hello            200 "hello\\n"
  GET  /factorial/N      200 N! as text
  GET  /status/CODE      CODE with a short body
  POST /echo             200 echoing the request body
"""

from __future__ import annotations

import math
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        parts = path.strip("/").split("/")
        if path == "/hello":
            self._send(200, b"hello\n")
        elif parts[0] == "factorial" and len(parts) == 2 and parts[1].isdigit():
            self._send(200, f"{math.factorial(int(parts[1]))}\n".encode())
        elif parts[0] == "status" and len(parts) == 2 and parts[1].isdigit():
            self._send(int(parts[1]), b"status\n")
        else:
            self._send(404, b"not found\n")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if self.path == "/echo":
            self._send(200, body)
        else:
            self._send(404, b"not found\n")


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
