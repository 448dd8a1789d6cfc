"""What the corpus recorders share: a loopback port, a server's readiness, one exchange
on a fresh connection, and the corpus file (one JSON line per case: name, the commands it
holds in order, request and response in base64)."""

from __future__ import annotations

import base64
import json
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS_DIR = ROOT / "tests" / "protocols" / "corpus"
sys.path.insert(0, str(ROOT))
from tests.support import free_port, wait_for_port  # noqa: E402

__all__ = ["CORPUS_DIR", "ROOT", "exchange", "free_port", "wait_for_port", "write_corpus"]


def exchange(port: int, request: bytes) -> bytes:
    """Sends the request as one write on a fresh connection; what came back until the server
    was quiet for 200 ms."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request)
        sock.settimeout(0.2)
        got = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return got
            if not chunk:
                return got
            got += chunk


def write_corpus(name: str, port: int, cases: list[tuple[str, list[str], bytes]]) -> None:
    lines = []
    for case, commands, request in cases:
        response = exchange(port, request)
        lines.append(json.dumps({"name": case, "commands": commands, "request": base64.b64encode(request).decode(),
                                 "response": base64.b64encode(response).decode()}))
    path = CORPUS_DIR / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    print(f"{len(lines)} exchanges written to {path.relative_to(ROOT)}")
