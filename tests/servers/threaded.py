"""The accept loop the test servers share: one thread per connection.

The servers run as scripts (`python tests/servers/x.py PORT [HOST]`), so this
is imported from their own directory."""

from __future__ import annotations

import socket
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
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
