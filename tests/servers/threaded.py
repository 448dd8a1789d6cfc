"""The accept loop the test servers share: one thread per connection.

The servers run as scripts (`python tests/servers/x.py PORT [HOST]`), so this
is imported from their own directory. With TLS_CERT and TLS_KEY in the
environment, every connection is TLS (Python's ssl module: OpenSSL's
SSL_read_ex / SSL_write_ex), the handshake made on the connection's thread."""

from __future__ import annotations

import http.server
import os
import socket
import ssl
import sys
import threading
from collections.abc import Callable


def serve_forever(serve: Callable[[socket.socket], None]) -> None:
    """Listens on PORT [HOST] from argv (HOST ::1 for IPv6), prints "ready", and runs
    serve(conn) for each connection on a thread of its own."""
    host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    srv = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, int(sys.argv[1])))
    srv.listen(64)
    context = None
    if os.environ.get("TLS_CERT"):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(os.environ["TLS_CERT"], os.environ["TLS_KEY"])
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=_serve, args=(serve, conn, context), daemon=True).start()


def _serve(serve: Callable[[socket.socket], None], conn: socket.socket,
           context: ssl.SSLContext | None) -> None:
    if context is not None:
        try:
            conn = context.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):
            conn.close()
            return
    serve(conn)


def serve_http(port: int, answer: Callable[[str], tuple[int, bytes]]) -> None:
    """An HTTP/1.1 keep-alive server (http.server, a thread per connection) on 127.0.0.1:port:
    each GET is answered with answer(path), a status and a body. Prints "ready"."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            status, body = answer(self.path)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("ready", flush=True)
    server.serve_forever()
