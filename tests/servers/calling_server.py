"""A thread-per-request HTTP server whose requests call another service.

Usage: calling_server.py PORT BACKEND_PORT [NEXT_URL]   (prints "ready" when listening)

  /call          GET http://127.0.0.1:BACKEND/plain from the request's thread
  /thread-call   the same from a thread the request's thread starts (and joins)
  /next          GET NEXT_URL (https: any certificate) and answer its body
  /none          answers without calling anything
"""

from __future__ import annotations

import http.server
import ssl
import sys
import threading
import urllib.request


def call_backend() -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[2]}/plain") as response:
        return bytes(response.read())


UNVERIFIED = ssl._create_unverified_context()


def call_next() -> bytes:
    with urllib.request.urlopen(sys.argv[3], context=UNVERIFIED) as response:
        return bytes(response.read())


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/call":
            body = call_backend()
        elif self.path == "/thread-call":
            result: list[bytes] = []
            worker = threading.Thread(target=lambda: result.append(call_backend()))
            worker.start()
            worker.join()
            body = result[0]
        elif self.path == "/next":
            body = call_next()
        else:
            body = b"none\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
print("ready", flush=True)
server.serve_forever()
