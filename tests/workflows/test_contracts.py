"""The payload dataclasses name their field types as types, not strings: the SDK resolves a
dataclass's type hints for every payload it decodes, and a string is compiled each time."""

from __future__ import annotations

import dataclasses
import inspect

from workflows import contracts


def test_payload_fields_are_types_not_strings() -> None:
    payloads = [
        cls
        for _, cls in inspect.getmembers(contracts, inspect.isclass)
        if dataclasses.is_dataclass(cls) and cls.__module__ == contracts.__name__
    ]
    assert len(payloads) > 30
    named_by_string = [
        f"{cls.__name__}.{field.name}"
        for cls in payloads
        for field in dataclasses.fields(cls)
        if isinstance(field.type, str)
    ]
    assert named_by_string == []
