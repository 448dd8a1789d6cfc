"""Derive src/obi/ebpf/go_offsets.json: the offsets of the Go struct fields obi's probes read.

A Go binary with DWARF tells obi where fields are; a stripped one does not, and obi then takes
them from this table, one row per Go minor release ("go1.19"). Each toolchain given builds a
small program that links net/http (server and client) and crypto/tls, and obi.ebpf.golang reads
the offsets from its DWARF. Rows of other releases already in the file are kept.

    .venv/bin/python tools/derive_go_offsets.py .venv/bin/go /usr/lib/go-1.19/bin/go
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from obi.ebpf.golang import OFFSETS_TABLE, GoError, inspect_go

ROOT = Path(__file__).resolve().parent.parent

# The fields obi's Go probes read. A field a release lacks is left out of its row, with a warning.
FIELDS = [
    *(f"net/http.Request.{name}" for name in (
        "Method", "URL", "Proto", "ProtoMajor", "ProtoMinor", "Header", "ContentLength", "Host", "RemoteAddr",
        "RequestURI")),
    "net/url.URL.Scheme", "net/url.URL.Host", "net/url.URL.Path",
    "net/http.Response.StatusCode", "net/http.Response.ContentLength",
    *(f"net/http.response.{name}" for name in ("conn", "req", "status", "written", "contentLength")),
    "net/http.conn.rwc", "net/http.conn.tlsState",
    # HTTP/2 server: bundled into net/http (http2 prefix), later the package net/http/internal/http2
    "net/http.http2responseWriter.rws", "net/http.http2responseWriterState.wroteBytes",
    "net/http/internal/http2.responseWriter.rws", "net/http/internal/http2.responseWriterState.wroteBytes",
    "net.conn.fd",
    "net.netFD.pfd",
    "internal/poll.FD.Sysfd",
    "crypto/tls.Conn.conn",
    "runtime.g.goid",
]

PROGRAM = """\
package main

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		return
	}
	resp, err := http.Get(os.Args[1])
	if err == nil {
		fmt.Println(resp.StatusCode, resp.ContentLength)
		resp.Body.Close()
	}
	if conn, err := tls.Dial("tcp", os.Args[1], &tls.Config{}); err == nil {
		conn.Close()
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	fmt.Println(http.ListenAndServe(os.Args[1], nil))
}
"""


def go_env() -> dict[str, str]:
    """A build with the toolchain as it is: std lib only, no network, caches under build/."""
    return {**os.environ, "GOTOOLCHAIN": "local", "GOPROXY": "off", "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0",
            "GOCACHE": str(ROOT / "build" / "gocache"), "GOPATH": str(ROOT / "build" / "gopath")}


def derive(go: Path, workdir: Path) -> tuple[str, dict[str, int]]:
    """(row, offsets) from a program built by the toolchain `go`."""
    source = workdir / "main.go"
    source.write_text(PROGRAM)
    binary = workdir / "offsets"
    subprocess.run([str(go), "build", "-o", str(binary), str(source)], check=True, env=go_env(), cwd=workdir)
    version = inspect_go(str(binary), [], []).version
    minor = re.search(r"go1\.(\d+)", version)
    if minor is None:
        raise SystemExit(f"{go}: {version}: not a Go 1.x version")
    row = f"go1.{minor.group(1)}"
    offsets: dict[str, int] = {}
    for field in FIELDS:
        try:
            inspected = inspect_go(str(binary), [], [field])
        except GoError as err:
            print(f"{version}: {err}; left out", file=sys.stderr)
            continue
        if inspected.offsets_from != "dwarf":
            print(f"{version}: {field} not in the program's DWARF; left out", file=sys.stderr)
            continue
        offsets[field] = inspected.offsets[field]
    print(f"{version}: {len(offsets)} of {len(FIELDS)} fields, row {row}", file=sys.stderr)
    return row, offsets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("toolchains", nargs="+", help="go commands, one per Go release")
    parser.add_argument("--output", type=Path, default=OFFSETS_TABLE)
    args = parser.parse_args()
    table: dict[str, dict[str, int]] = json.loads(args.output.read_text()) if args.output.exists() else {}
    (ROOT / "build").mkdir(exist_ok=True)
    for name in args.toolchains:
        found = shutil.which(name)
        if found is None:
            raise SystemExit(f"{name}: no such go command")
        go = Path(found).absolute()
        with tempfile.TemporaryDirectory(dir=ROOT / "build") as workdir:
            row, offsets = derive(go, Path(workdir))
        if row in table and table[row] != offsets:
            print(f"{row}: the row changes ({go})", file=sys.stderr)
        table[row] = offsets
    rows = sorted(table, key=lambda row: int(row.removeprefix("go1.")))
    args.output.write_text(json.dumps({row: table[row] for row in rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
