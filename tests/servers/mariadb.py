"""A throwaway MariaDB server on loopback for tests and benchmarks (Debian's mariadb-server),
with databases `shop` (table users) and `audit` (table events) and a user `obi`
(mysql_native_password)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support import free_port, start_process, stop_process

PASSWORD = "obi-maria-pw"


@dataclass
class MariaDbServer:
    proc: subprocess.Popen[str]
    port: int
    root: Path

    def stop(self) -> None:
        stop_process(self.proc, timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


def start_mariadb() -> MariaDbServer:
    root = Path(tempfile.mkdtemp(prefix="obi-maria-"))
    data, socket = root / "data", root / "mysqld.sock"
    subprocess.run(["mariadb-install-db", f"--datadir={data}", "--user=root",
                    "--auth-root-authentication-method=socket", "--skip-test-db"],
                   check=True, capture_output=True, timeout=120)
    port = free_port()
    argv = ["mariadbd", "--no-defaults", f"--datadir={data}", f"--socket={socket}", f"--port={port}",
            "--bind-address=127.0.0.1", "--user=root", "--skip-log-bin", "--innodb-buffer-pool-size=16M",
            "--skip-name-resolve", f"--pid-file={root / 'mysqld.pid'}", f"--log-error={root / 'error.log'}"]
    server = MariaDbServer(start_process(argv, port=port, timeout=60), port, root)
    setup = (f"CREATE DATABASE shop; CREATE USER 'obi'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'; "
             "GRANT ALL ON shop.* TO 'obi'@'127.0.0.1'; "
             "CREATE TABLE shop.users (id INT PRIMARY KEY, name TEXT); "
             "INSERT INTO shop.users VALUES (1, 'alice'), (2, 'bob'); "
             "CREATE DATABASE audit; GRANT ALL ON audit.* TO 'obi'@'127.0.0.1'; "
             "CREATE TABLE audit.events (id INT);")
    try:
        subprocess.run(["mariadb", f"--socket={socket}", "-u", "root", "-e", setup], check=True, timeout=30)
    except BaseException:
        server.stop()
        raise
    return server
