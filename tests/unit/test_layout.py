"""Struct layouts: CFFI's view of bpf/http.h against the compiled object's BTF."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from obi.ebpf._libbpf import ffi
from obi.ebpf.objects import object_path


def btf_struct(name: str) -> dict[str, Any]:
    out = subprocess.run(["bpftool", "-j", "btf", "dump", "file", str(object_path("http"))],
                         check=True, capture_output=True, text=True).stdout
    for t in json.loads(out)["types"]:
        if t.get("kind") == "STRUCT" and t.get("name") == name:
            return dict(t)
    raise AssertionError(f"struct {name} is not in the BTF of http.bpf.o")


@pytest.mark.parametrize("name", ["obi_http_event", "obi_conn_key"])
def test_struct_layout_matches_btf(name: str) -> None:
    btf = btf_struct(name)
    ctype = ffi.typeof(f"struct {name}")
    assert ffi.sizeof(ctype) == btf["size"]
    cffi_fields = [(fname, f.offset, ffi.sizeof(f.type)) for fname, f in ctype.fields]
    btf_members = [(m["name"], m["bits_offset"] // 8) for m in btf["members"]]
    assert [(n, o) for n, o, _ in cffi_fields] == btf_members
