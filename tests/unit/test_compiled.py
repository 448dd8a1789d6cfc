"""The per-event modules mypyc compiles: the build's list, the suite on the compiled code, and
the refusal of an extension whose source changed after the build."""

from __future__ import annotations

import ast
import hashlib
import json
import os
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from obi.compiled import MODULES, StaleCompiledModule, check, compiled_modules

ROOT = Path(__file__).resolve().parents[2]


def setup_compiled() -> tuple[str, ...]:
    """What setup.py compiles: its compiled_sources(), run apart from the rest of setup.py."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    found: list[ast.stmt] = [n for n in tree.body
                             if isinstance(n, ast.FunctionDef) and n.name == "compiled_sources"]
    namespace: dict[str, object] = {"ast": ast, "ROOT": ROOT}
    exec(compile(ast.Module(body=found, type_ignores=[]), "setup.py", "exec"), namespace)
    return namespace["compiled_sources"]()  # type: ignore[operator, no-any-return]


def test_the_build_and_the_check_name_the_same_modules() -> None:
    assert tuple(p.removesuffix(".py").replace("/", ".") for p in setup_compiled()) == MODULES
    makefile = (ROOT / "Makefile").read_text().split("COMPILED :=", 1)[1].split("SOURCES", 1)[0]
    assert makefile.replace("\\", " ").split() == [f"src/{p}" for p in setup_compiled()]


@pytest.mark.skipif(os.environ.get("OBI_PURE_PYTHON") == "1", reason="built without mypyc on purpose")
def test_the_suite_runs_the_compiled_modules() -> None:
    assert compiled_modules() == list(MODULES)


def fake_build(root: Path, digest_of: dict[str, bytes] | None) -> Path:
    """A package tree under root with one compiled module (an empty stand-in extension)."""
    source = root / "obi" / "traces" / "records.py"
    source.parent.mkdir(parents=True)
    source.write_text("X = 1\n")
    source.with_name("records" + EXTENSION_SUFFIXES[0]).write_bytes(b"")
    digests = root / "digests.json"
    if digest_of is not None:
        digests.write_text(json.dumps({name: hashlib.sha256(text).hexdigest()
                                       for name, text in digest_of.items()}))
    return digests


def test_an_extension_built_from_its_current_source_is_accepted(tmp_path: Path) -> None:
    digests = fake_build(tmp_path, {"obi.traces.records": b"X = 1\n"})
    assert compiled_modules(tmp_path) == ["obi.traces.records"]
    check(tmp_path, digests)


def test_an_extension_whose_source_changed_is_refused(tmp_path: Path) -> None:
    digests = fake_build(tmp_path, {"obi.traces.records": b"X = 0\n"})
    with pytest.raises(StaleCompiledModule, match=r"records\.py changed after it was compiled.*make setup"):
        check(tmp_path, digests)


def test_an_extension_without_a_digest_is_refused(tmp_path: Path) -> None:
    digests = fake_build(tmp_path, None)
    with pytest.raises(StaleCompiledModule):
        check(tmp_path, digests)


def test_sources_without_extensions_need_no_digest(tmp_path: Path) -> None:
    (tmp_path / "obi").mkdir()
    assert compiled_modules(tmp_path) == []
    check(tmp_path, tmp_path / "missing.json")
