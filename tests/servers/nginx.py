"""A throwaway nginx on loopback for tests and benchmarks (Debian's nginx-light)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from tests.support import TIME_SCALE, free_port, start_process

NGINX_CONF = """\
daemon off;
user root;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    keepalive_requests 1000000;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
{http}
}}
"""
# The static site of start_nginx.
STATIC_SITE = """\
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
        location = /fail {{ return 500 "failed\\n"; }}
        location = /created {{ return 201 "created\\n"; }}
    }}"""


def nginx_binary() -> str:
    path = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(path).exists(), "nginx is not installed (make test installs nginx-light)"
    return path


def start_nginx(root: Path, http: str = STATIC_SITE, **values: object) -> tuple[subprocess.Popen[str], int]:
    """nginx on a free port; by default serving root/www: index.html (13 B) and big.bin (100 kB).

    `http` replaces the server blocks (formatted with root, port and `values`)."""
    port = free_port()
    (root / "www").mkdir(parents=True, exist_ok=True)
    (root / "www" / "index.html").write_text("<h1>obi</h1>\n")
    (root / "www" / "big.bin").write_bytes(b"z" * 100_000)
    conf = root / "nginx.conf"
    conf.write_text(NGINX_CONF.format(root=root, port=port,
                                      http=http.format(root=root, port=port, **values)))
    proc = start_process([nginx_binary(), "-c", str(conf), "-e", str(root / "error.log")], port=port)
    return proc, port


def nginx_worker(master: int, timeout: float = 5.0) -> int:
    """The pid of the single worker of an nginx master. The master listens before it forks
    the worker: on a slow machine (an emulated kernel) the worker may not be there yet."""
    deadline = time.monotonic() + timeout * TIME_SCALE
    while True:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        if children or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert len(children) == 1, children
    return int(children[0])
