"""An HTTP/2 (h2c) server from the h2 library, for the capture's tests.

Usage: h2_server.py PORT READ_SIZE   (prints "ready" when listening)

It reads READ_SIZE bytes at a time (a small size splits frame headers across reads) and
answers each request once its stream ends: status 200, a body of the size `/size/<n>` asks
for (else "ok"), in one write; a request with content-type application/grpc gets gRPC
trailers (grpc-status 0, or the number `/status/<n>` asks for) after its body.
"""

from __future__ import annotations

import socket
import sys

import h2.config
import h2.connection
import h2.events

port, read_size = int(sys.argv[1]), int(sys.argv[2])


def text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


listener = socket.create_server(("127.0.0.1", port))
print("ready", flush=True)
while True:
    sock, _ = listener.accept()
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    requests: dict[int, dict[str, str]] = {}
    while data := sock.recv(read_size):
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                requests[event.stream_id] = {text(k): text(v) for k, v in event.headers}
            elif isinstance(event, h2.events.StreamEnded):
                headers = requests.pop(event.stream_id, {})
                path = headers.get(":path", "/")
                body = b"x" * int(path.rsplit("/", 1)[1]) if path.startswith("/size/") else b"ok"
                grpc = headers.get("content-type", "").startswith("application/grpc")
                conn.send_headers(event.stream_id, [(":status", "200")])
                conn.send_data(event.stream_id, body, end_stream=not grpc)
                if grpc:
                    status = path.rsplit("/", 1)[1] if path.startswith("/status/") else "0"
                    conn.send_headers(event.stream_id, [("grpc-status", status)], end_stream=True)
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        out = conn.data_to_send()
        if out:
            sock.sendall(out)
    sock.close()
