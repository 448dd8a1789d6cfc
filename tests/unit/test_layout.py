"""Struct layouts: CFFI's view of bpf/capture.h against the compiled object's BTF."""

from __future__ import annotations

import json
import subprocess
from functools import cache
from typing import Any

import pytest

from obi.ebpf._libbpf import ffi
from obi.ebpf.objects import object_path

STRUCTS = ["obi_exchange", "obi_process", "obi_pid_info", "obi_conn_key", "obi_sweep_ctl", "obi_go_http",
           "obi_go_offsets", "obi_ids"]


@cache
def btf_types() -> dict[int, dict[str, Any]]:
    out = subprocess.run(["bpftool", "-j", "btf", "dump", "file", str(object_path("capture"))],
                         check=True, capture_output=True, text=True).stdout
    return {t["id"]: t for t in json.loads(out)["types"]}


def btf_size(type_id: int) -> int:
    """Size in bytes of a BTF type, through typedefs, qualifiers and arrays."""
    t = btf_types()[type_id]
    if t["kind"] in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
        return btf_size(t["type_id"])
    if t["kind"] == "ARRAY":
        return int(t["nr_elems"]) * btf_size(t["type_id"])
    return int(t["size"])


def btf_struct(name: str) -> dict[str, Any]:
    for t in btf_types().values():
        if t.get("kind") == "STRUCT" and t.get("name") == name:
            return t
    raise AssertionError(f"struct {name} is not in the BTF of capture.bpf.o")


@pytest.mark.parametrize("name", STRUCTS)
def test_struct_layout_matches_btf(name: str) -> None:
    btf = btf_struct(name)
    ctype = ffi.typeof(f"struct {name}")
    assert ffi.sizeof(ctype) == btf["size"]
    cffi_fields = [(fname, f.offset, ffi.sizeof(f.type)) for fname, f in ctype.fields]
    btf_members = [(m["name"], m["bits_offset"] // 8, btf_size(m["type_id"])) for m in btf["members"]]
    assert cffi_fields == btf_members


def test_records_have_no_implicit_padding() -> None:
    """Every byte of a record is a named field: the kernel writes each, none is left to chance."""
    for name in ("obi_exchange", "obi_process", "obi_go_http", "obi_ids"):
        ctype = ffi.typeof(f"struct {name}")
        covered = sum(ffi.sizeof(f.type) for _, f in ctype.fields)
        assert covered == ffi.sizeof(ctype), name
