"""A gRPC client (grpcio, raw bytes) for the end-to-end tests: says "ready", waits for "go" on
stdin, makes its calls on one channel, prints each result, says "done", then idles.

argv: port traceparent [cert] (traceparent sent as metadata with the first call; TLS trusting
cert when given)"""

from __future__ import annotations

import sys

import grpc

port, traceparent = sys.argv[1], sys.argv[2]
print("ready", flush=True)
sys.stdin.readline()
if len(sys.argv) > 3:  # connects at the first call, after "go"
    channel = grpc.secure_channel(f"127.0.0.1:{port}",
                                  grpc.ssl_channel_credentials(open(sys.argv[3], "rb").read()))
else:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
add = channel.unary_unary("/shop.Cart/Add", None, None)  # raw bytes both ways
watch = channel.unary_stream("/shop.Cart/Watch", None, None)
fail = channel.unary_unary("/shop.Cart/Fail", None, None)
print(add(b"apple", metadata=(("traceparent", traceparent),)), flush=True)
print(list(watch(b"3")), flush=True)
try:
    fail(b"x")
except grpc.RpcError as err:
    print(err.code().name, flush=True)
print("done", flush=True)
sys.stdin.read()
