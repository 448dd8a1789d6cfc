"""A web service in front of a gRPC backend: what obi's users run.

Usage: grpc_gateway.py PORT GRPC_PORT   (prints "ready" when listening)

  GET /cart/<item>   calls /shop.Cart/Add with the item on one grpcio channel, answers its reply

Thread per request; the channel connects at the first request.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.servers.threaded import serve_http

PORT, GRPC_PORT = int(sys.argv[1]), int(sys.argv[2])
CHANNEL = grpc.insecure_channel(f"127.0.0.1:{GRPC_PORT}")
ADD = CHANNEL.unary_unary("/shop.Cart/Add", None, None)  # raw bytes both ways


def answer(path: str) -> tuple[int, bytes]:
    if path.startswith("/cart/"):
        return 200, ADD(path.rsplit("/", 1)[1].encode())
    return 404, b""


serve_http(PORT, answer)
