"""A throwaway PostgreSQL cluster on loopback for tests and benchmarks (the machine's
PostgreSQL 15, run as the postgres user: it refuses root)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support import free_port, start_process, stop_process

PASSWORD = "obi-test-pw"  # the obi role's (scram-sha-256 over TCP)


def postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise FileNotFoundError(f"PostgreSQL's {name} (apt install postgresql)")
    return found[-1]


def as_postgres(argv: list[str]) -> list[str]:
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *argv]


@dataclass
class PostgresServer:
    proc: subprocess.Popen[str]
    port: int
    root: Path  # its own directory under /tmp (the postgres user cannot reach pytest's)

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(ssl: tuple[Path, Path] | None = None) -> PostgresServer:
    """postgres on a free loopback port with a database `shop` (table users) and a role `obi`
    (password PASSWORD, scram-sha-256), trust for the postgres role; `ssl`: certificate, key."""
    root = Path(tempfile.mkdtemp(prefix="obi-pg-"))
    data = root / "pgdata"
    shutil.chown(root, "postgres", "postgres")
    subprocess.run(as_postgres([postgres_bin("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                                "--no-sync"]), check=True, capture_output=True, timeout=120)
    (data / "pg_hba.conf").write_text("local all all trust\nhost all postgres 127.0.0.1/32 trust\n"
                                      "host all all 127.0.0.1/32 scram-sha-256\n")
    settings = ["listen_addresses = '127.0.0.1'", f"unix_socket_directories = '{root}'", "fsync = off",
                "max_connections = 50", "shared_buffers = 32MB", "log_min_messages = fatal"]
    if ssl is not None:
        cert, key = data / "server.crt", data / "server.key"
        shutil.copy(ssl[0], cert)
        shutil.copy(ssl[1], key)
        for path in (cert, key):
            shutil.chown(path, "postgres", "postgres")
        os.chmod(key, 0o600)
        settings += ["ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'"]
    with (data / "postgresql.conf").open("a") as conf:
        conf.write("\n".join(settings) + "\n")
    port = free_port()
    argv = as_postgres([postgres_bin("postgres"), "-D", str(data), "-p", str(port)])
    server = PostgresServer(start_process(argv, port=port, timeout=30), port, root)
    psql = ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-q"]
    try:
        subprocess.run([*psql, "-c", f"CREATE ROLE obi LOGIN PASSWORD '{PASSWORD}'"], check=True, timeout=30)
        subprocess.run([*psql, "-c", "CREATE DATABASE shop OWNER obi"], check=True, timeout=30)
        subprocess.run([*psql, "-d", "shop", "-c", "SET ROLE obi; CREATE TABLE users (id int PRIMARY KEY, "
                        "name text); INSERT INTO users VALUES (1, 'alice'), (2, 'bob');"],
                       check=True, timeout=30)
    except BaseException:
        server.stop()
        raise
    return server
