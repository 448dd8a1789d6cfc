"""A gRPC client (grpcio, raw bytes) for the end-to-end tests: says "ready", and for each "go"
on stdin makes its calls on one channel (opened at the first), prints each result and says
"done"; it ends when stdin does.

argv: port traceparent [cert] (traceparent sent as metadata with each round's first call; TLS
trusting cert when given)"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc

port, traceparent = sys.argv[1], sys.argv[2]
print("ready", flush=True)
sys.stdin.readline()
if len(sys.argv) > 3:  # connects at the first call, after "go"
    channel = grpc.secure_channel(f"127.0.0.1:{port}",
                                  grpc.ssl_channel_credentials(Path(sys.argv[3]).read_bytes()))
else:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
add = channel.unary_unary("/shop.Cart/Add", None, None)  # raw bytes both ways
watch = channel.unary_stream("/shop.Cart/Watch", None, None)
fail = channel.unary_unary("/shop.Cart/Fail", None, None)
while True:
    print(add(b"apple", metadata=(("traceparent", traceparent),)), flush=True)
    print(list(watch(b"3")), flush=True)
    try:
        fail(b"x")
    except grpc.RpcError as err:
        print(err.code().name, flush=True)
    print("done", flush=True)
    if not sys.stdin.readline():
        break
