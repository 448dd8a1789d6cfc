"""A bounded gRPC load for `make bench`: COUNT unary calls of /shop.Cart/Add on one channel
(grpcio, raw bytes) against tests/servers/grpc_server.py, then prints "<count> <calls/s>".

Usage: grpc_load.py PORT COUNT"""

from __future__ import annotations

import sys
import time

import grpc

port, count = sys.argv[1], int(sys.argv[2])
with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    add = channel.unary_unary("/shop.Cart/Add", None, None)
    add(b"warm-up")
    start = time.perf_counter()
    for _ in range(count):
        add(b"apple")
    elapsed = time.perf_counter() - start
print(count, count / elapsed)
