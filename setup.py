"""Build: the CFFI module over libbpf, and the CO-RE BPF objects (clang).

clang is needed here only; at run time obi loads the prebuilt objects.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
BPF_ARCH = {"x86_64": "x86", "aarch64": "arm64"}


def compile_bpf_objects(out_dir: Path) -> None:
    """Compiles every bpf/*.bpf.c into out_dir/*.bpf.o (CO-RE, BTF kept)."""
    clang = os.environ.get("CLANG") or shutil.which("clang")
    if not clang:
        raise SystemExit("obi build: clang is required to compile bpf/*.bpf.c (apt-get install clang)")
    arch = BPF_ARCH.get(platform.machine())
    if arch is None:
        raise SystemExit(f"obi build: unsupported architecture {platform.machine()}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for source in sorted((ROOT / "bpf").glob("*.bpf.c")):
        target = out_dir / source.name.replace(".bpf.c", ".bpf.o")
        cmd = [
            # -mcpu=v3: 32-bit jumps and the atomic and/or the slot bitmap uses (Linux 5.12+)
            clang, "-O2", "-g", "-target", "bpf", "-mcpu=v3", f"-D__TARGET_ARCH_{arch}",
            "-Wall", "-Werror",
            "-I", str(ROOT / "vmlinux"), "-I", str(ROOT / "bpf"),
            "-c", str(source), "-o", str(target),
        ]
        print(" ".join(cmd))
        subprocess.run(cmd, check=True)
        # DWARF is only for humans; BTF (kept) is what CO-RE and the layout tests need.
        strip = shutil.which("llvm-strip")
        if strip:
            subprocess.run([strip, "-g", str(target)], check=True)


class BuildExtWithBpf(build_ext):
    """build_ext that also compiles the BPF objects next to the package."""

    def run(self) -> None:
        super().run()
        # Next to the loader, as package data of obi.ebpf.
        if self.inplace:
            out = ROOT / "src" / "obi" / "ebpf"
        else:
            out = Path(self.build_lib) / "obi" / "ebpf"
        compile_bpf_objects(out)


setup(
    cffi_modules=["src/_cffi_src/build_libbpf.py:ffibuilder"],
    cmdclass={"build_ext": BuildExtWithBpf},
)
