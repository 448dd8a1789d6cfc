"""The span classes' written-out __init__: its parameters are the dataclass fields, in order."""

from __future__ import annotations

from dataclasses import fields

import pytest

from obi.traces.model import DbSpan, HttpSpan, RpcSpan, ServiceIdentity, Span


def _value(index: int, name: str, annotation: object) -> object:
    """A value of the field's type that no other field of the span has (annotations are strings,
    or types where the module is compiled)."""
    annotation = getattr(annotation, "__name__", str(annotation))
    if annotation == "ServiceIdentity":
        return ServiceIdentity(pid=index, exe_path=f"/bin/{name}", service_name=name)
    if annotation == "bytes":
        return name.encode()
    if annotation == "bool":
        return True
    if annotation == "int":
        return 1000 + index
    return name  # str, str | None


@pytest.mark.parametrize("cls", [HttpSpan, DbSpan, RpcSpan])
def test_every_field_is_set_from_its_own_parameter(cls: type[Span]) -> None:
    values = {f.name: _value(i, f.name, f.type) for i, f in enumerate(fields(cls))}
    by_name = cls(**values)  # type: ignore[arg-type]
    by_position = cls(*values.values())  # type: ignore[arg-type]
    for name, value in values.items():
        assert getattr(by_name, name) == value, name
    assert by_position == by_name
