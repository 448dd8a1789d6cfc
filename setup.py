"""Build: the CFFI module over libbpf, the CO-RE BPF objects (clang), the per-event
modules compiled to C extensions with mypyc, and the C parsing in csrc/ (obi._http1).

clang is needed here only; at run time obi loads the prebuilt objects. The modules every
exchange goes through (MODULES in src/obi/compiled.py) are compiled by mypyc, unchanged;
with the C header parser, about 2x less CPU per span than as Python on the replay benchmark
(BENCHMARKS.md). OBI_PURE_PYTHON=1 builds without mypyc.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
# The architectures obi is built and load-tested on (README, "Kernels"): x86-64 only. The
# BPF sources keep their arm64 branches, but nothing builds or loads them in CI, so arm64
# is not offered.
BPF_ARCH = {"x86_64": "x86"}


def compiled_sources() -> tuple[str, ...]:
    """The per-event path's modules (MODULES in src/obi/compiled.py, which also checks at
    start that each runs compiled from its current source), as paths under src/; read, not
    imported: obi's dependencies may not be installed yet."""
    tree = ast.parse((ROOT / "src" / "obi" / "compiled.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "MODULES" for t in node.targets):
            return tuple(name.replace(".", "/") + ".py" for name in ast.literal_eval(node.value))
    raise SystemExit("obi build: src/obi/compiled.py has no MODULES")


COMPILED = compiled_sources()


def pure_python() -> bool:
    return os.environ.get("OBI_PURE_PYTHON") == "1"


def compiled_extensions() -> list[Extension]:
    """mypyc's extensions for COMPILED (none with OBI_PURE_PYTHON=1)."""
    if pure_python():
        # extensions an earlier build left in place would run instead of the sources
        for path in COMPILED:
            for built in (ROOT / "src" / path).parent.glob(Path(path).stem + ".cpython-*.so"):
                built.unlink()
        for built in (ROOT / "src").glob("*__mypyc.*.so"):
            built.unlink()
        return []
    from mypyc.build import mypycify  # build requirement (pyproject.toml)

    # Without the project's mypy configuration (strict, for `make lint`): the build may run
    # before obi's dependencies are installed (a fresh .venv, pip's isolated build), and what
    # mypyc needs to know comes from obi's own annotations.
    flags = ["--config-file=", "--ignore-missing-imports", "--python-version=3.11"]
    return list(mypycify([*flags, *(f"src/{path}" for path in COMPILED)], opt_level="3"))


def native_extensions() -> list[Extension]:
    """The per-event parsing written in C (csrc/), with or without mypyc."""
    return [Extension("obi._http1", ["csrc/http1.c"], extra_compile_args=["-O2", "-Wall"])]


def write_digests(package_dir: Path) -> None:
    """The digest of each compiled source, in _compiled_sources.json beside the extensions
    (obi/compiled.py checks them at import)."""
    digests = package_dir / "_compiled_sources.json"
    if pure_python():
        digests.unlink(missing_ok=True)
        return
    sources = {path.removesuffix(".py").replace("/", "."): (ROOT / "src" / path).read_bytes()
               for path in COMPILED}
    package_dir.mkdir(parents=True, exist_ok=True)
    digests.write_text(json.dumps({name: hashlib.sha256(text).hexdigest() for name, text in sources.items()},
                                  indent=1, sort_keys=True) + "\n")


def compile_bpf_objects(out_dir: Path) -> None:
    """Compiles every bpf/*.bpf.c into out_dir/*.bpf.o (CO-RE, BTF kept)."""
    clang = os.environ.get("CLANG") or shutil.which("clang")
    if not clang:
        raise SystemExit("obi build: clang is required to compile bpf/*.bpf.c (apt-get install clang)")
    arch = BPF_ARCH.get(platform.machine())
    if arch is None:
        raise SystemExit(f"obi build: unsupported architecture {platform.machine()} (obi is built and "
                         "tested on x86_64 only)")
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

    def finalize_options(self) -> None:
        # Added here, not to setup(): pip asks for the metadata first, and that needs no C.
        if self.distribution.ext_modules is None:
            self.distribution.ext_modules = []
        self.distribution.ext_modules += [*compiled_extensions(), *native_extensions()]
        super().finalize_options()

    def run(self) -> None:
        package = ROOT / "src" / "obi" if self.inplace else Path(self.build_lib) / "obi"
        write_digests(package)
        super().run()
        # Next to the loader, as package data of obi.ebpf.
        compile_bpf_objects(package / "ebpf")


setup(
    cffi_modules=["src/_cffi_src/build_libbpf.py:ffibuilder"],
    cmdclass={"build_ext": BuildExtWithBpf},
)
