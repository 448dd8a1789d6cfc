"""A web service in front of a gRPC backend: what obi's users run.

Usage: grpc_gateway.py PORT GRPC_PORT   (prints "ready" when listening)

  GET /cart/<item>   calls /shop.Cart/Add with the item on one grpcio channel, answers its reply

Thread per request; the channel connects at the first request.
"""

from __future__ import annotations

import http.server
import sys

import grpc

PORT, GRPC_PORT = int(sys.argv[1]), int(sys.argv[2])
CHANNEL = grpc.insecure_channel(f"127.0.0.1:{GRPC_PORT}")
ADD = CHANNEL.unary_unary("/shop.Cart/Add", None, None)  # raw bytes both ways


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        status, body = 404, b""
        if self.path.startswith("/cart/"):
            status, body = 200, ADD(self.path.rsplit("/", 1)[1].encode())
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print("ready", flush=True)
server.serve_forever()
