"""A gRPC server (grpcio, no generated code: raw bytes) for the end-to-end tests.

Usage: grpc_server.py PORT [CERT KEY]   (prints "ready" when serving; TLS with CERT and KEY)

  /shop.Cart/Add     unary: answers b"added:" + the request
  /shop.Cart/Watch   server streaming: as many answers as the request's number
  /shop.Cart/Fail    unary: fails with NOT_FOUND
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc


def add(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b"added:" + request


def watch(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    for i in range(int(request)):
        yield b"event %d" % i


def fail(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.NOT_FOUND, "no such cart")
    return b""


server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("shop.Cart", {
    "Add": grpc.unary_unary_rpc_method_handler(add),
    "Watch": grpc.unary_stream_rpc_method_handler(watch),
    "Fail": grpc.unary_unary_rpc_method_handler(fail),
}),))
if len(sys.argv) > 2:
    key, cert = Path(sys.argv[3]).read_bytes(), Path(sys.argv[2]).read_bytes()
    credentials = grpc.ssl_server_credentials([(key, cert)])
    server.add_secure_port(f"127.0.0.1:{sys.argv[1]}", credentials)
else:
    server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
server.start()
print("ready", flush=True)
server.wait_for_termination()
