"""A tiny HTTP/1.0 server that forks, exits or execs in the middle of a request.

Usage: forking_server.py PORT [WORKERS]   (prints "ready" when listening)
       forking_server.py --resume LISTEN_FD CONN_FD   (after an exec, internal)

With WORKERS > 0, the parent forks that many children that all accept on the
inherited listening socket (prefork) and serves nothing itself. Every answer
closes the connection; the body is the pid that wrote it.

  GET /fork...   a child is forked after the request is read; it answers and exits
  GET /exit...   the process exits without answering
  GET /exec...   the process execs itself (OTEL_SERVICE_NAME from EXEC_SERVICE_NAME),
                 the new image answers and goes on serving
  GET anything   200 with the pid
"""

from __future__ import annotations

import os
import signal
import socket
import sys


def read_request(conn: socket.socket) -> str:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    parts = data.split(b" ", 2)
    return parts[1].decode() if len(parts) > 1 else ""


def answer(conn: socket.socket) -> None:
    body = f"{os.getpid()}\n".encode()
    head = f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
    conn.sendall(head + body)
    conn.close()


def handle(listener: socket.socket, conn: socket.socket) -> None:
    path = read_request(conn)
    if path.startswith("/fork"):
        if os.fork() == 0:
            answer(conn)
            os._exit(0)
        conn.close()
    elif path.startswith("/exit"):
        os._exit(0)
    elif path.startswith("/exec"):
        os.set_inheritable(listener.fileno(), True)
        os.set_inheritable(conn.fileno(), True)
        env = {**os.environ, "OTEL_SERVICE_NAME": os.environ.get("EXEC_SERVICE_NAME", "after-exec")}
        os.execve(sys.executable, [sys.executable, __file__, "--resume", str(listener.fileno()),
                                   str(conn.fileno())], env)
    else:
        answer(conn)


def serve(listener: socket.socket) -> None:
    while True:
        conn, _ = listener.accept()
        handle(listener, conn)


def main() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # no zombies from /fork
    if sys.argv[1] == "--resume":
        listener = socket.socket(fileno=int(sys.argv[2]))
        answer(socket.socket(fileno=int(sys.argv[3])))
        serve(listener)
        return
    listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    if not workers:
        print("ready", flush=True)
        serve(listener)
        return
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            serve(listener)
        children.append(pid)

    def stop(_signum: int, _frame: object) -> None:
        for child in children:
            os.kill(child, signal.SIGTERM)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
