"""The modules of the per-event path that the build compiles with mypyc (setup.py reads MODULES),
and the check that each one runs compiled from its current source.

A compiled module is a C extension beside its .py, and Python imports the extension first: a
.py edited after the build would silently not run. The build writes the digest of every source
it compiled (_compiled_sources.json); at import, an extension whose source no longer matches
is refused with what to do.
"""

from __future__ import annotations

import hashlib
import json
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

MODULES = (
    "obi.traces.records",
    "obi.traces.model",
    "obi.protocols.base",
    "obi.protocols.http",
    "obi.export.fanout",
    "obi.export.metrics",
    "obi.export.encode",
)
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the directory holding obi/
DIGESTS = Path(__file__).resolve().with_name("_compiled_sources.json")


class StaleCompiledModule(ImportError):
    pass


def _extension(source: Path) -> Path | None:
    for suffix in EXTENSION_SUFFIXES:
        candidate = source.with_name(source.stem + suffix)
        if candidate.exists():
            return candidate
    return None


def compiled_modules(root: Path = _PACKAGE_ROOT) -> list[str]:
    """The modules of MODULES that have a C extension beside their source (under `root`)."""
    return [name for name in MODULES if _extension(root / (name.replace(".", "/") + ".py")) is not None]


def check(root: Path = _PACKAGE_ROOT, digests_file: Path = DIGESTS) -> None:
    """Raise StaleCompiledModule if a compiled module's source changed after the build."""
    found = compiled_modules(root)
    if not found:
        return
    try:
        digests: dict[str, str] = json.loads(digests_file.read_text())
    except (OSError, ValueError):
        digests = {}
    for name in found:
        source = root / (name.replace(".", "/") + ".py")
        try:
            current = hashlib.sha256(source.read_bytes()).hexdigest()
        except OSError:
            continue  # an installation without sources: the extension is all there is
        if digests.get(name) != current:
            raise StaleCompiledModule(
                f"obi: {source} changed after it was compiled, and its C extension would run "
                f"instead of it: run `make setup` (or reinstall obi), or build with OBI_PURE_PYTHON=1")
